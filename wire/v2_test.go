package wire

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"os"
	"testing"
)

var updateVectors = flag.Bool("update", false, "rewrite testdata/v2.json")

var v2Device = Device{ID: "iot_med_dev_01", Key: [16]byte([]byte("1234567890123456")), IV: [16]byte([]byte("AAAAAAAAAAAAAAAA"))}

const v2SamplePayload = `{"time":1764000000123,"values":{"Temp":36.6,"TempMcu":23.7,"PulseSig":1.735,"Acel_x":0,"Acel_y":-0.02,"Acel_z":0.98,"TempMpu":23.4}}`

// v2Vector is one entry of testdata/v2.json (also quoted in PROTOCOL.md).
type v2Vector struct {
	Name    string `json:"name"`
	Device  string `json:"device"`
	Key     string `json:"key"`
	IV      string `json:"iv"`
	AEADKey string `json:"aead_key_hex"`
	Seq     uint64 `json:"seq"`
	Nonce   string `json:"nonce_hex"`
	Payload string `json:"payload"`
	Frame   string `json:"frame_hex"`
}

func makeV2Vectors(t *testing.T) []v2Vector {
	t.Helper()
	k := NewV2Key(v2Device)
	aeadKey := DeriveV2Key(v2Device)
	withPulse := `{"time":1764000000173,"values":{"Temp":36.6,"TempMcu":23.7,"PulseSig":1.74,"Acel_x":0.01,"Acel_y":-0.02,"Acel_z":0.98,"TempMpu":23.4},"pulse":{"rate":250,"start":1764000000123,"samples":[1.701,1.712,1.735,1.762,1.798,1.84,1.881,1.915,1.93,1.921,1.89,1.85]}}`
	var out []v2Vector
	for i, c := range []struct {
		name, payload string
		seq           uint64
	}{{"reading", v2SamplePayload, 1}, {"reading with pulse batch", withPulse, 2}} {
		var nonce [12]byte
		for j := range nonce {
			nonce[j] = byte(0x10*i + j)
		}
		frame, err := k.SealData(nil, v2Device.ID, c.seq, nonce, []byte(c.payload))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v2Vector{c.name, v2Device.ID, string(v2Device.Key[:]), string(v2Device.IV[:]), hex.EncodeToString(aeadKey[:]), c.seq, hex.EncodeToString(nonce[:]), c.payload, hex.EncodeToString(frame)})
	}
	return out
}

// TestV2Vectors checks the codec against testdata/v2.json: sealing
// reproduces every frame byte for byte and opening gives the payload.
func TestV2Vectors(t *testing.T) {
	fresh := makeV2Vectors(t)
	if *updateVectors {
		b, _ := json.MarshalIndent(fresh, "", "  ")
		if err := os.WriteFile("testdata/v2.json", append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile("testdata/v2.json")
	if err != nil {
		t.Fatal(err)
	}
	var stored []v2Vector
	if err := json.Unmarshal(b, &stored); err != nil {
		t.Fatal(err)
	}
	if len(stored) != len(fresh) {
		t.Fatalf("%d stored vectors, want %d", len(stored), len(fresh))
	}
	for i, v := range stored {
		if v != fresh[i] {
			t.Errorf("vector %q: the codec no longer reproduces it", v.Name)
		}
		raw, _ := hex.DecodeString(v.Frame)
		f, err := ParseV2(raw)
		if err != nil {
			t.Fatal(err)
		}
		if f.Device != v.Device || f.Seq != v.Seq || hex.EncodeToString(f.Nonce[:]) != v.Nonce {
			t.Errorf("vector %q: header %+v", v.Name, f)
		}
		dev := Device{ID: v.Device, Key: [16]byte([]byte(v.Key)), IV: [16]byte([]byte(v.IV))}
		plain, err := NewV2Key(dev).Open(nil, &f)
		if err != nil || string(plain) != v.Payload {
			t.Errorf("vector %q: open %q %v", v.Name, plain, err)
		}
		if _, err := ParseV2Payload(plain); err != nil {
			t.Errorf("vector %q: payload %v", v.Name, err)
		}
	}
}

// TestDeriveV2KeyIsHKDF checks the documented derivation against the
// standard library's HKDF-Expand.
func TestDeriveV2KeyIsHKDF(t *testing.T) {
	want, err := hkdf.Expand(sha256.New, append(v2Device.Key[:], v2Device.IV[:]...), v2KeyInfo, 16)
	if err != nil {
		t.Fatal(err)
	}
	if got := DeriveV2Key(v2Device); !bytes.Equal(got[:], want) {
		t.Fatalf("DeriveV2Key %x, HKDF-Expand %x", got, want)
	}
}

// TestV2FlippedBit flips every bit of a frame in turn: each change is
// either a malformed frame or a failed authentication, never a payload.
func TestV2FlippedBit(t *testing.T) {
	k := NewV2Key(v2Device)
	frame, err := k.SealData(nil, v2Device.ID, 7, [12]byte{1, 2, 3}, []byte(v2SamplePayload))
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(frame) * 8 {
		bad := bytes.Clone(frame)
		bad[i/8] ^= 1 << (i % 8)
		f, err := ParseV2(bad)
		if err != nil {
			continue
		}
		key := k
		if f.Device != v2Device.ID { // the edge would look up another device's key
			key = NewV2Key(Device{ID: f.Device, Key: v2Device.Key, IV: v2Device.IV})
		}
		if p, err := key.Open(nil, &f); err == nil {
			t.Fatalf("bit %d flipped: frame accepted with payload %q", i, p)
		}
	}
}

func TestReadV2Frame(t *testing.T) {
	k := NewV2Key(v2Device)
	one, _ := k.SealData(nil, v2Device.ID, 1, [12]byte{}, []byte(v2SamplePayload))
	two, _ := k.SealData(nil, v2Device.ID, 2, [12]byte{1}, []byte(v2SamplePayload))
	tests := []struct {
		name    string
		in      []byte
		max     int
		frames  int
		wantErr error
	}{
		{"two frames", append(bytes.Clone(one), two...), 4096, 2, nil},
		{"truncated body", one[:len(one)-1], 4096, 0, ErrTruncated},
		{"truncated prefix", one[:3], 4096, 0, ErrTruncated},
		{"oversize", one, 64, 0, ErrFrameTooLong},
		{"bad version", append([]byte{V2Magic, 9}, one[2:]...), 4096, 0, ErrV2Malformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bytes.NewReader(tt.in)
			n := 0
			var err error
			for {
				var f []byte
				if f, err = ReadV2Frame(r, nil, tt.max); err != nil {
					break
				}
				if _, perr := ParseV2(f); perr != nil {
					t.Fatal(perr)
				}
				n++
			}
			if n != tt.frames {
				t.Errorf("%d frames, want %d", n, tt.frames)
			}
			want := tt.wantErr
			if want == nil {
				want = errEOF
			}
			if !errors.Is(err, want) {
				t.Errorf("error %v, want %v", err, want)
			}
		})
	}
}

func TestV2AckAndError(t *testing.T) {
	f, err := ParseV2(AppendV2Ack(nil, 42))
	if err != nil || f.Type != V2Ack || f.Seq != 42 {
		t.Fatalf("ack: %+v %v", f, err)
	}
	f, err = ParseV2(AppendV2Error(nil, 7, V2ErrStore, "store unavailable"))
	if err != nil || f.Type != V2Error || f.Seq != 7 || f.Code != V2ErrStore || f.Message != "store unavailable" {
		t.Fatalf("error: %+v %v", f, err)
	}
	if IsHexDigit(V2Magic) {
		t.Fatal("v2 magic is a hex digit")
	}
}

func TestV2ValuesFormatLikeLegacy(t *testing.T) {
	p, err := ParseV2Payload([]byte(v2SamplePayload))
	if err != nil {
		t.Fatal(err)
	}
	want := Reading{"36.600", "23.700", "1.735", "0.000", "-0.02", "0.980", "23.400"}
	if got := p.Values.Reading(); got != want {
		t.Fatalf("got %v, want %v", got, want)
	}
	if _, err := ParseV2Payload([]byte(`{"time":1,"values":{"Temp":1}}`)); !errors.Is(err, ErrMissingField) {
		t.Fatalf("missing fields: %v", err)
	}
}

func FuzzParseV2(f *testing.F) {
	k := NewV2Key(v2Device)
	frame, _ := k.SealData(nil, v2Device.ID, 1, [12]byte{}, []byte(v2SamplePayload))
	f.Add(frame)
	f.Add(AppendV2Ack(nil, 1))
	f.Add(AppendV2Error(nil, 1, 1, "x"))
	// Frames sealed with the key for real: the seed and the vectors (which
	// the seed corpus in testdata/fuzz holds too). Any other frame that
	// opens is a forgery.
	genuine := map[string]bool{string(frame): true}
	b, err := os.ReadFile("testdata/v2.json")
	if err != nil {
		f.Fatal(err)
	}
	var vectors []v2Vector
	if err := json.Unmarshal(b, &vectors); err != nil {
		f.Fatal(err)
	}
	for _, v := range vectors {
		fb, err := hex.DecodeString(v.Frame)
		if err != nil {
			f.Fatal(err)
		}
		genuine[string(fb)] = true
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		fr, err := ParseV2(in)
		if err != nil {
			return
		}
		if fr.Type == V2Data {
			if p, err := k.Open(nil, &fr); err == nil && !genuine[string(in)] {
				t.Fatalf("forged frame accepted: %q", p)
			}
		}
	})
}

func FuzzParseV2Payload(f *testing.F) {
	f.Add([]byte(v2SamplePayload))
	f.Add([]byte(`{"time":1,"values":{},"pulse":{"rate":250,"start":0,"samples":[1,2]}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := ParseV2Payload(in)
		if err != nil {
			return
		}
		if r := p.Values.Reading(); r.Validate() != nil {
			t.Fatalf("valid payload gives invalid reading %v", r)
		}
	})
}

// TestAppendV2PayloadReadsBack checks that the hand-written encoder gives
// what ParseV2Payload reads back, and the same JSON as encoding/json.
func TestAppendV2PayloadReadsBack(t *testing.T) {
	tests := []V2Payload{
		{Time: 1764000000123, Values: V2Values{36.6, 23.7, 1.735, 0, -0.02, 0.98, 23.4}},
		{Time: 1, Values: V2Values{1e-9, 1e22, -0, 5, 6, 7, 8}, Pulse: &PulseBatch{Rate: 250, Start: 1, Samples: []float64{1.701, 1.712, -3}}},
		{Time: 2, Values: V2Values{1, 2, 3, 4, 5, 6, 7}, Pulse: &PulseBatch{Rate: 250, Start: 2, Samples: []float64{}}},
	}
	for i, p := range tests {
		got := AppendV2Payload(nil, &p)
		want, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("%d: got  %s\nwant %s", i, got, want)
		}
		back, err := ParseV2Payload(got)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if back.Time != p.Time || back.Values != p.Values {
			t.Errorf("%d: read back %+v", i, back)
		}
	}
	nan := V2Payload{Values: V2Values{Temp: math.NaN()}}
	if _, err := ParseV2Payload(AppendV2Payload(nil, &nan)); !errors.Is(err, ErrMissingField) {
		t.Errorf("NaN: got %v, want it refused", err)
	}
}
