package bus

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func sampleRawFrames() []RawFrame {
	at := time.Date(2026, 12, 3, 10, 4, 5, 123456789, time.UTC)
	return []RawFrame{
		{Conn: "edge1-1", Seq: 1, Received: at, Remote: "10.0.0.7:51000", Local: "10.0.0.1:5000", Data: []byte("0a1b2c3d\n")},
		{Conn: "edge1-2", Seq: 7, Received: at.Add(time.Millisecond), Remote: "[2001:db8::1]:4000", Local: "10.0.0.1:5000", Data: []byte("ff00\n")},
		{Conn: "edge1-1", Seq: 2, Received: at.Add(2 * time.Millisecond), Remote: "10.0.0.7:51000", Local: "10.0.0.1:5000", Data: []byte{}},
	}
}

func rawBatchOf(fs []RawFrame) []byte {
	var records []byte
	for i := range fs {
		records = AppendRawFrame(records, &fs[i])
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
			got, err := DecodeRawBatch(rawBatchOf(tc.fs))
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
	good := rawBatchOf(sampleRawFrames())
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"empty", nil},
		{"single frame text", []byte("0a1b2c\n")},
		{"no frames", AppendRawBatch(nil, 0, nil)},
		{"count beyond the bytes", AppendRawBatch(nil, 4_000_000_000, []byte("abcdef"))},
		{"count above the records", AppendRawBatch(nil, 4, good[2:])},
		{"truncated", good[:len(good)-1]},
		{"trailing bytes", append(append([]byte(nil), good...), 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if fs, err := DecodeRawBatch(tc.body); !errors.Is(err, ErrRawBatch) {
				t.Fatalf("got %d frames, err %v; want ErrRawBatch", len(fs), err)
			}
		})
	}
}

func TestRawFrameHeader(t *testing.T) {
	batch := nats.Header{HeaderEdge: {"edge1"}, HeaderProtocol: {ProtocolLegacyBatch}, HeaderReceived: {"x"}, "Nats-Msg-Id": {"edge1:b3:9"}, "Medpipe-Origin-Seq": {"41"}}
	f := sampleRawFrames()[1]
	h := f.Header(batch)
	want := nats.Header{
		HeaderEdge: {"edge1"}, "Medpipe-Origin-Seq": {"41"},
		HeaderConn: {"edge1-2"}, HeaderFrameSeq: {"7"}, HeaderReceived: {"2026-12-03T10:04:05.124456789Z"},
		HeaderRemote: {"[2001:db8::1]:4000"}, HeaderLocal: {"10.0.0.1:5000"}, HeaderProtocol: {ProtocolLegacy},
	}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("headers\n%v\nwant\n%v", h, want)
	}
	if IsRawBatch(h) || !IsRawBatch(batch) {
		t.Fatal("IsRawBatch does not tell a batch from its frames")
	}
}

// FuzzDecodeRawBatch: any body either decodes into frames that encode back
// to the same bytes, or is refused with ErrRawBatch; never a panic, never
// an allocation a forged count asks for.
func FuzzDecodeRawBatch(f *testing.F) {
	f.Add(rawBatchOf(sampleRawFrames()))
	f.Add(rawBatchOf(sampleRawFrames()[:1]))
	f.Add([]byte{rawBatchV1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, body []byte) {
		fs, err := DecodeRawBatch(body)
		if err != nil {
			if !errors.Is(err, ErrRawBatch) {
				t.Fatalf("error %v is not ErrRawBatch", err)
			}
			return
		}
		if again := rawBatchOf(fs); string(again) != string(body) {
			// Only a varint written longer than it needs may differ.
			if refs, err := DecodeRawBatch(again); err != nil || !reflect.DeepEqual(refs, fs) {
				t.Fatalf("re-encoded batch decodes to %+v, %v; want %+v", refs, err, fs)
			}
		}
	})
}
