package bus

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func sampleRawFrames() []RawFrame {
	at := time.Date(2026, 12, 3, 10, 4, 5, 123456789, time.UTC)
	return []RawFrame{
		{Protocol: ProtocolLegacy, Conn: "edge1-1", Seq: 1, Received: at, Remote: "10.0.0.7:51000", Local: "10.0.0.1:5000", Data: []byte("0a1b2c3d\n")},
		{Protocol: ProtocolV2, Device: "pico-7", Conn: "edge1-2", Seq: 7, Received: at.Add(time.Millisecond), Remote: "[2001:db8::1]:4000", Local: "10.0.0.1:5000", Data: []byte{0x03, 0x01, 0xff}},
		{Protocol: ProtocolLegacy, Conn: "edge1-1", Seq: 2, Received: at.Add(2 * time.Millisecond), Remote: "10.0.0.7:51000", Local: "10.0.0.1:5000", Data: []byte{}},
	}
}

func rawBatchOf(t testing.TB, fs []RawFrame) []byte {
	t.Helper()
	var records []byte
	for i := range fs {
		var err error
		if records, err = AppendRawFrame(records, &fs[i]); err != nil {
			t.Fatal(err)
		}
	}
	return AppendRawBatch(nil, len(fs), records)
}

func TestRawBatchRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		fs   []RawFrame
	}{
		{"three", sampleRawFrames()},
		{"one", sampleRawFrames()[1:2]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeRawBatch(rawBatchOf(t, tc.fs))
			if err != nil {
				t.Fatal(err)
			}
			for i := range got {
				if len(got[i].Data) == 0 {
					got[i].Data = []byte{}
				}
			}
			if !reflect.DeepEqual(got, tc.fs) {
				t.Fatalf("decoded\n%+v\nwant\n%+v", got, tc.fs)
			}
		})
	}
}

func TestDecodeRawBatchRefuses(t *testing.T) {
	good := rawBatchOf(t, sampleRawFrames())
	record := func(f RawFrame) []byte {
		b, err := AppendRawFrame(nil, &f)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	legacyRecord := record(RawFrame{Protocol: ProtocolLegacy, Conn: "c", Seq: 1, Data: []byte("ab")})
	if fs, err := DecodeRawBatch(AppendRawBatch(nil, MaxRawBatchFrames, bytes.Repeat(legacyRecord, MaxRawBatchFrames))); err != nil || len(fs) != MaxRawBatchFrames {
		t.Fatalf("a batch of MaxRawBatchFrames: %d frames, %v", len(fs), err)
	}
	legacyWithDevice := record(RawFrame{Protocol: ProtocolLegacy, Device: "pico-7", Conn: "c", Seq: 1, Data: []byte("ab")})
	v2WithoutDevice := record(RawFrame{Protocol: ProtocolLegacy, Conn: "c", Seq: 1, Data: []byte("ab")})
	v2WithoutDevice[0] = rawFrameV2
	unknownProtocol := record(RawFrame{Protocol: ProtocolLegacy, Conn: "c", Seq: 1, Data: []byte("ab")})
	unknownProtocol[0] = 7
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"empty", nil},
		{"single frame text", []byte("0a1b2c\n")},
		{"no frames", AppendRawBatch(nil, 0, nil)},
		{"count beyond the bytes", AppendRawBatch(nil, 4_000_000_000, []byte("abcdef"))},
		{"more frames than a batch may hold", AppendRawBatch(nil, MaxRawBatchFrames+1, bytes.Repeat(legacyRecord, MaxRawBatchFrames+1))},
		{"count above the records", AppendRawBatch(nil, 4, good[2:])},
		{"truncated", good[:len(good)-1]},
		{"trailing bytes", append(append([]byte(nil), good...), 0)},
		{"a legacy frame naming a device", AppendRawBatch(nil, 1, legacyWithDevice)},
		{"a v2 frame naming none", AppendRawBatch(nil, 1, v2WithoutDevice)},
		{"an unknown protocol", AppendRawBatch(nil, 1, unknownProtocol)},
		{"the development body 0xBA", append([]byte{0xBA}, good[1:]...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if fs, err := DecodeRawBatch(tc.body); !errors.Is(err, ErrRawBatch) {
				t.Fatalf("got %d frames, err %v; want ErrRawBatch", len(fs), err)
			}
		})
	}
}

func TestRawFrameHeader(t *testing.T) {
	batch := nats.Header{HeaderEdge: {"edge1"}, HeaderProtocol: {ProtocolBatch}, HeaderReceived: {"x"}, "Nats-Msg-Id": {"edge1:b3:9"}, "Medpipe-Origin-Seq": {"41"}}
	f := sampleRawFrames()[1]
	h := f.Header(batch)
	want := nats.Header{
		HeaderEdge: {"edge1"}, "Medpipe-Origin-Seq": {"41"},
		HeaderConn: {"edge1-2"}, HeaderFrameSeq: {"7"}, HeaderReceived: {"2026-12-03T10:04:05.124456789Z"},
		HeaderRemote: {"[2001:db8::1]:4000"}, HeaderLocal: {"10.0.0.1:5000"}, HeaderProtocol: {ProtocolV2}, HeaderDevice: {"pico-7"},
	}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("headers\n%v\nwant\n%v", h, want)
	}
	if legacy := sampleRawFrames()[0].Header(batch); legacy.Get(HeaderProtocol) != ProtocolLegacy || legacy.Get(HeaderDevice) != "" {
		t.Fatalf("a legacy frame's headers: %v", legacy)
	}
	if IsRawBatch(h) || !IsRawBatch(batch) {
		t.Fatal("IsRawBatch does not tell a batch from its frames")
	}
}

// FuzzDecodeRawBatch: any body either decodes into frames that encode back
// to the same bytes, or is refused with ErrRawBatch; never a panic, never
// an allocation a forged count asks for.
func FuzzDecodeRawBatch(f *testing.F) {
	f.Add(rawBatchOf(f, sampleRawFrames()))
	f.Add(rawBatchOf(f, sampleRawFrames()[:1]))
	f.Add([]byte{rawBatchBody, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, body []byte) {
		fs, err := DecodeRawBatch(body)
		if err != nil {
			if !errors.Is(err, ErrRawBatch) {
				t.Fatalf("error %v is not ErrRawBatch", err)
			}
			return
		}
		if again := rawBatchOf(t, fs); string(again) != string(body) {
			// Only a varint written longer than it needs may differ.
			if refs, err := DecodeRawBatch(again); err != nil || !reflect.DeepEqual(refs, fs) {
				t.Fatalf("re-encoded batch decodes to %+v, %v; want %+v", refs, err, fs)
			}
		}
	})
}
