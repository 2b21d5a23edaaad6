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
	"reflect"
	"testing"
)

var updateVectors = flag.Bool("update", false, "rewrite testdata/v2.json")

var v2Device = Device{ID: "iot_med_dev_01", Key: [16]byte([]byte("1234567890123456")), IV: [16]byte([]byte("AAAAAAAAAAAAAAAA"))}

// v2Sample is the reading of the first test vector.
var v2Sample = V2Payload{Time: 1764000000123, Values: V2Values{36.6, 23.7, 1.735, 0, -0.02, 0.98, 23.4}}

// v2Missing is the third test vector's reading: the DS18B20 does not
// answer, so Temp travels as a placeholder 0 and reads as absent.
var v2Missing = V2Payload{Time: 1764000000223, Values: V2Values{0, 23.7, 1.745, 0.01, -0.02, 0.98, 23.4},
	Sensors: SensorStates{TempSensor: SensorMissing}}

// v2SamplePayload is v2Sample encoded.
var v2SamplePayload = mustPayload(&v2Sample)

func mustPayload(p *V2Payload) []byte {
	b, err := AppendV2Payload(nil, p)
	if err != nil {
		panic(err)
	}
	return b
}

// v2Vector is one entry of testdata/v2.json (also quoted in PROTOCOL.md).
type v2Vector struct {
	Name       string `json:"name"`
	Device     string `json:"device"`
	Key        string `json:"key"`
	IV         string `json:"iv"`
	AEADKey    string `json:"aead_key_hex"`
	ACKKey     string `json:"ack_key_hex"`
	NonceBase  string `json:"nonce_base_hex"`
	Generation string `json:"generation_hex"`
	Seq        uint64 `json:"seq"`
	Nonce      string `json:"nonce_hex"`
	Reading    string `json:"reading"` // the payload as legacy text, for reading along
	Payload    string `json:"payload_hex"`
	Frame      string `json:"frame_hex"`
	Ack        string `json:"ack_hex"`
	Refused    string `json:"refused_replayed_hex"`
}

func makeV2Vectors(t *testing.T) []v2Vector {
	t.Helper()
	k := NewV2Key(v2Device)
	km := DeriveV2Keys(v2Device)
	withPulse := V2Payload{Time: 1764000000173, Values: V2Values{36.6, 23.7, 1.74, 0.01, -0.02, 0.98, 23.4},
		Pulse: &PulseCodes{Rate: 250, Start: 1764000000125, Codes: []uint16{2111, 2125, 2153, 2187, 2231, 2283, 2334, 2376, 2395, 2384, 2345, 2296, 2250}}}
	var out []v2Vector
	for _, c := range []struct {
		name string
		p    *V2Payload
		seq  uint64
	}{
		{"reading", &v2Sample, V2Seq(7, 1)},
		{"reading with pulse batch", &withPulse, V2Seq(7, 2)},
		{"temperature sensor missing", &v2Missing, V2Seq(7, 3)},
	} {
		payload := mustPayload(c.p)
		frame, err := k.SealData(nil, c.seq, payload)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ParseV2(frame)
		if err != nil {
			t.Fatal(err)
		}
		nonce := k.Nonce(c.seq)
		r := c.p.Reading()
		out = append(out, v2Vector{
			Name: c.name, Device: v2Device.ID, Key: string(v2Device.Key[:]), IV: string(v2Device.IV[:]),
			AEADKey: hex.EncodeToString(km.AEAD[:]), ACKKey: hex.EncodeToString(km.ACK[:]),
			NonceBase: hex.EncodeToString(km.Nonce[:]), Generation: hex.EncodeToString(km.Generation[:]),
			Seq: c.seq, Nonce: hex.EncodeToString(nonce[:]), Reading: string(r.AppendJSON(nil)),
			Payload: hex.EncodeToString(payload), Frame: hex.EncodeToString(frame),
			Ack:     hex.EncodeToString(k.AppendAck(nil, c.seq, f.Tag())),
			Refused: hex.EncodeToString(k.AppendRefused(nil, c.seq, V2RefReplayed, f.Tag())),
		})
	}
	return out
}

// TestV2Vectors checks the codec against testdata/v2.json: sealing
// reproduces every frame and reply byte for byte, opening gives the
// payload, and the replies verify against the frame.
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
		if f.Device != v.Device || f.Seq != v.Seq {
			t.Errorf("vector %q: header %+v", v.Name, f)
		}
		dev := Device{ID: v.Device, Key: [16]byte([]byte(v.Key)), IV: [16]byte([]byte(v.IV))}
		k := NewV2Key(dev)
		plain, err := k.Open(nil, &f)
		if err != nil || hex.EncodeToString(plain) != v.Payload {
			t.Errorf("vector %q: open %x %v", v.Name, plain, err)
		}
		p, err := ParseV2Payload(plain)
		if err != nil {
			t.Fatalf("vector %q: payload %v", v.Name, err)
		}
		if r := p.Reading(); string(r.AppendJSON(nil)) != v.Reading {
			t.Errorf("vector %q: reading %s", v.Name, r.AppendJSON(nil))
		}
		for _, reply := range []string{v.Ack, v.Refused} {
			rb, _ := hex.DecodeString(reply)
			rf, err := ParseV2(rb)
			if err != nil || !k.VerifyReply(&rf, raw) {
				t.Errorf("vector %q: reply %s does not verify (%v)", v.Name, reply, err)
			}
		}
	}
}

// TestHKDFIsRFC5869 checks the derivation written out for TinyGo against
// the standard library's HKDF.
func TestHKDFIsRFC5869(t *testing.T) {
	ikm := append(v2Device.Key[:], v2Device.IV[:]...)
	km := DeriveV2Keys(v2Device)
	for _, c := range []struct {
		info string
		got  []byte
	}{
		{v2InfoAEAD, km.AEAD[:]}, {v2InfoACK, km.ACK[:]}, {v2InfoNonce, km.Nonce[:]}, {v2InfoGeneration, km.Generation[:]},
	} {
		want, err := hkdf.Key(sha256.New, ikm, []byte(v2Salt), string(v2Info(c.info, v2Device.ID)), len(c.got))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(c.got, want) {
			t.Errorf("%s: derived %x, crypto/hkdf %x", c.info, c.got, want)
		}
	}
	other := DeriveV2Keys(Device{ID: "other", Key: v2Device.Key, IV: v2Device.IV})
	if other.AEAD == km.AEAD || other.ACK == km.ACK || other.Generation == km.Generation {
		t.Error("two device ids with one secret share a key")
	}
}

// TestV2NonceUnique: distinct sequence numbers give distinct nonces (the
// map is the proof for a sample; XOR with a constant is a bijection).
func TestV2NonceUnique(t *testing.T) {
	k := NewV2Key(v2Device)
	seen := map[[12]byte]uint64{}
	for _, seq := range []uint64{0, 1, 2, V2Seq(1, 1), V2Seq(1, 2), V2Seq(2, 1), math.MaxUint64, 1 << 63} {
		n := k.Nonce(seq)
		if prev, dup := seen[n]; dup {
			t.Fatalf("seq %d and %d share a nonce", prev, seq)
		}
		seen[n] = seq
	}
	if V2SeqEpoch(V2Seq(9, 5)) != 9 || V2SeqCounter(V2Seq(9, 5)) != 5 || V2Seq(1, 0) != 1<<32 {
		t.Fatal("epoch and counter do not round-trip")
	}
}

// TestV2FlippedBit flips every bit of a frame in turn: each change is
// either a malformed frame or a failed authentication, never a payload.
func TestV2FlippedBit(t *testing.T) {
	k := NewV2Key(v2Device)
	frame, err := k.SealData(nil, 7, v2SamplePayload)
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
			t.Fatalf("bit %d flipped: frame accepted with payload %x", i, p)
		}
	}
}

// TestV2Replies: a reply verifies only for the frame it was made for and
// under the device's own key; the edge's ERROR carries no MAC at all.
func TestV2Replies(t *testing.T) {
	k := NewV2Key(v2Device)
	other := NewV2Key(Device{ID: v2Device.ID, Key: [16]byte([]byte("6543210987654321")), IV: v2Device.IV})
	one, _ := k.SealData(nil, 1, v2SamplePayload)
	two, _ := k.SealData(nil, 2, v2SamplePayload)
	f1, _ := ParseV2(one)
	ack := func(key *V2Key, seq uint64, tag []byte) V2Frame {
		f, err := ParseV2(key.AppendAck(nil, seq, tag))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	tests := []struct {
		name  string
		reply V2Frame
		frame []byte
		want  bool
	}{
		{"genuine", ack(k, 1, f1.Tag()), one, true},
		{"another frame's seq", ack(k, 1, f1.Tag()), two, false},
		{"another tag", ack(k, 1, make([]byte, 16)), one, false},
		{"another key", ack(other, 1, f1.Tag()), one, false},
		{"forged MAC", func() V2Frame { f := ack(k, 1, f1.Tag()); f.MAC[0] ^= 1; return f }(), one, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := k.VerifyReply(&tt.reply, tt.frame); got != tt.want {
				t.Fatalf("verified %v, want %v", got, tt.want)
			}
		})
	}
	f, err := ParseV2(AppendV2Error(nil, 7, V2ErrStore, "store unavailable"))
	if err != nil || f.Type != V2Error || f.Seq != 7 || f.Code != V2ErrStore || f.Message != "store unavailable" || k.VerifyReply(&f, one) {
		t.Fatalf("error: %+v %v", f, err)
	}
	if IsHexDigit(V2Magic) {
		t.Fatal("v2 magic is a hex digit")
	}
}

func TestReadV2Frame(t *testing.T) {
	k := NewV2Key(v2Device)
	one, _ := k.SealData(nil, 1, v2SamplePayload)
	two, _ := k.SealData(nil, 2, v2SamplePayload)
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
		{"oversize", one, 32, 0, ErrFrameTooLong},
		{"old version 2", append([]byte{V2Magic, 2}, one[2:]...), 4096, 0, ErrV2Malformed},
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

func TestV2ValuesFormatLikeLegacy(t *testing.T) {
	p, err := ParseV2Payload(v2SamplePayload)
	if err != nil {
		t.Fatal(err)
	}
	want := Reading{"36.600", "23.700", "1.735", "0.000", "-0.02", "0.980", "23.400"}
	if got := p.Values.Reading(); got != want {
		t.Fatalf("got %v, want %v", got, want)
	}
	short := bytes.Clone(v2SamplePayload)
	short[8] = 6
	if _, err := ParseV2Payload(short); !errors.Is(err, ErrMissingField) {
		t.Fatalf("missing fields: %v", err)
	}
}

// TestV2PayloadRoundTrip: what AppendV2Payload writes, ParseV2Payload reads
// back (values to their fixed-point scale, codes exactly), and bad input
// is refused when written.
func TestV2PayloadRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		p    V2Payload
		size int
	}{
		{"values", v2Sample, 8 + 1 + 28 + 2 + 2},
		{"odd pulse", V2Payload{Time: 5, Values: V2Values{-1.5, 2, 3, 4, 5, 6, 7}, Pulse: &PulseCodes{Rate: 250, Start: 1, Codes: []uint16{0, 4095, 2048}}}, 41 + 6 + 5},
		{"even pulse", V2Payload{Time: 5, Pulse: &PulseCodes{Rate: 10000, Start: 9, Codes: []uint16{1, 2, 3, 4}}}, 41 + 6 + 6},
		{"empty pulse", V2Payload{Time: 5, Pulse: &PulseCodes{Rate: 250, Start: 1}}, 41},
		{"sensors", V2Payload{Time: 5, Values: V2Values{PulseSig: 1.5, TempMcu: 20}, Sensors: SensorStates{SensorMissing, SensorOK, SensorOK, SensorError}}, 41},
		{"starting", V2Payload{Time: 5, Values: V2Values{Temp: 36}, Sensors: SensorStates{SensorOK, SensorOK, SensorStarting, SensorOK}}, 41},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := AppendV2Payload(nil, &tt.p)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != tt.size {
				t.Errorf("%d bytes, want %d", len(b), tt.size)
			}
			back, err := ParseV2Payload(b)
			if err != nil {
				t.Fatal(err)
			}
			if back.Time != tt.p.Time || back.Values != tt.p.Values || back.Sensors != tt.p.Sensors {
				t.Errorf("read back %+v", back)
			}
			if tt.p.Pulse != nil && len(tt.p.Pulse.Codes) > 0 {
				if back.Pulse == nil || back.Pulse.Rate != tt.p.Pulse.Rate || back.Pulse.Start != tt.p.Pulse.Start || !slicesEqual(back.Pulse.Codes, tt.p.Pulse.Codes) {
					t.Errorf("pulse read back %+v", back.Pulse)
				}
			} else if back.Pulse != nil {
				t.Errorf("pulse from nothing: %+v", back.Pulse)
			}
		})
	}
	for _, bad := range []V2Payload{
		{Values: V2Values{Temp: math.NaN()}},
		{Values: V2Values{Temp: 1e7}},
		{Pulse: &PulseCodes{Rate: 0, Codes: []uint16{1}}},
	} {
		if _, err := AppendV2Payload(nil, &bad); !errors.Is(err, ErrV2Payload) {
			t.Errorf("%+v: got %v, want it refused", bad, err)
		}
	}
	if PulseCode(1.701) != 2111 || PulseCode(-1) != 0 || PulseCode(9) != PulseMaxCode || PulseCode(math.NaN()) != 0 || PulseVolts(2111) != 1.7008 {
		t.Errorf("pulse code conversion: %d %v", PulseCode(1.701), PulseVolts(2111))
	}
}

func slicesEqual(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFieldTable: the table, the Field constants and the legacy format agree.
func TestFieldTable(t *testing.T) {
	for f := range NumFields {
		s := f.Spec()
		if s.Name == "" || s.Topic == "" || s.Scale <= 0 || f.Name() != s.Name {
			t.Errorf("field %d: %+v", f, s)
		}
		if g, ok := FieldByName(s.Name); !ok || g != f {
			t.Errorf("FieldByName(%q) = %v %v", s.Name, g, ok)
		}
	}
	for _, c := range []struct {
		v    float64
		want string
	}{{36.6, "36.600"}, {-0.02, "-0.02"}, {-0.001, "0.000"}, {0, "0.000"}, {-12.345, "-12.35"}} {
		if got := Temp.Format(c.v); got != c.want {
			t.Errorf("Format(%v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func FuzzParseV2(f *testing.F) {
	k := NewV2Key(v2Device)
	frame, _ := k.SealData(nil, 1, v2SamplePayload)
	fr, _ := ParseV2(frame)
	ack, refused := k.AppendAck(nil, 1, fr.Tag()), k.AppendRefused(nil, 1, V2RefReplayed, fr.Tag())
	f.Add(frame)
	f.Add(ack)
	f.Add(refused)
	f.Add(AppendV2Error(nil, 1, 1, "x"))
	// Frames and replies made with the key for real: the seeds and the
	// vectors. Any other frame that opens, or reply that verifies, is a forgery.
	genuine := map[string]bool{string(frame): true, string(ack): true, string(refused): true}
	b, err := os.ReadFile("testdata/v2.json")
	if err != nil {
		f.Fatal(err)
	}
	var vectors []v2Vector
	if err := json.Unmarshal(b, &vectors); err != nil {
		f.Fatal(err)
	}
	for _, v := range vectors {
		for _, h := range []string{v.Frame, v.Ack, v.Refused} {
			fb, err := hex.DecodeString(h)
			if err != nil {
				f.Fatal(err)
			}
			genuine[string(fb)] = true
			f.Add(fb)
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		fr, err := ParseV2(in)
		if err != nil {
			return
		}
		switch fr.Type {
		case V2Data:
			if p, err := k.Open(nil, &fr); err == nil && !genuine[string(in)] {
				t.Fatalf("forged frame accepted: %x", p)
			}
		case V2Ack, V2Refused:
			if k.VerifyReply(&fr, frame) && !genuine[string(in)] {
				t.Fatalf("forged reply verified: %x", in)
			}
		}
	})
}

// FuzzParseV2Payload: a payload that parses gives a reading that
// validates, and writing it again gives the same bytes.
func FuzzParseV2Payload(f *testing.F) {
	f.Add(v2SamplePayload)
	f.Add(mustPayload(&V2Payload{Time: 1, Pulse: &PulseCodes{Rate: 250, Start: 0, Codes: []uint16{1, 2, 3}}}))
	f.Add(mustPayload(&V2Payload{Time: 1, Sensors: SensorStates{SensorMissing, SensorOK, SensorStarting, SensorError}}))
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := ParseV2Payload(in)
		if err != nil {
			return
		}
		if r := p.Reading(); r.ValidateWith(&p.Sensors) != nil {
			t.Fatalf("valid payload gives invalid reading %v", r)
		}
		if in[8] != byte(NumFields) || in[9+4*int(NumFields)] != byte(NumSensors) {
			return // extra values or sensors of a newer device are not written back
		}
		out, err := AppendV2Payload(nil, &p)
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("rewritten %x (%v), read %x", out, err, in)
		}
	})
}

// FuzzV2Replies reads a device's reply stream: no panic, and nothing that
// verifies against a frame unless it was made with the key.
func FuzzV2Replies(f *testing.F) {
	k := NewV2Key(v2Device)
	frame, _ := k.SealData(nil, 3, v2SamplePayload)
	fr, _ := ParseV2(frame)
	genuine := k.AppendAck(nil, 3, fr.Tag())
	f.Add(genuine)
	f.Add(append(AppendV2Error(nil, 0, 1, "bad"), genuine...))
	f.Fuzz(func(t *testing.T, in []byte) {
		o := NewOutbox(4, 0)
		o.Add(3, frame)
		_ = ReadV2Replies(bytes.NewReader(in), func(r *V2Frame) {
			if o.Settle(k, r) != Unverified && r.Type == V2Ack && !bytes.Contains(in, genuine) {
				t.Fatalf("forged ACK settled a frame: %x", in)
			}
		})
	})
}

// TestV2SensorStates: the states are packed two bits a sensor, an absent
// value reads as "" (never a 0 that reads like a measurement), and a
// payload whose absent value is not 0, or with fewer sensors than the
// table, is refused.
func TestV2SensorStates(t *testing.T) {
	b := mustPayload(&v2Missing)
	at := 9 + 4*int(NumFields)
	if b[at] != byte(NumSensors) || b[at+1] != byte(SensorMissing)<<6 {
		t.Fatalf("states written as % x", b[at:at+2])
	}
	p, err := ParseV2Payload(b)
	if err != nil {
		t.Fatal(err)
	}
	r := p.Reading()
	if r[Temp] != "" || r[TempMcu] != "23.700" || p.Sensors.Of(Temp) != SensorMissing || !p.Sensors.Absent(Temp) || p.Sensors.Absent(AcelX) {
		t.Fatalf("reading %q, states %v", r, p.Sensors)
	}
	if err := r.ValidateWith(&p.Sensors); err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err == nil {
		t.Fatal("an absent value validates as a measurement")
	}
	if j := string(p.Sensors.AppendJSON(nil)); j != `{"temperature":"missing","mcu":"ok","pulse":"ok","motion":"ok"}` {
		t.Fatalf("JSON %s", j)
	}
	var back SensorStates
	if err := back.UnmarshalJSON(p.Sensors.AppendJSON(nil)); err != nil || back != p.Sensors {
		t.Fatalf("JSON round trip %v %v", back, err)
	}
	// A stale value written under a missing sensor goes out as 0.
	stale := v2Missing
	stale.Values.Temp = 36.6
	if !bytes.Equal(mustPayload(&stale), b) {
		t.Fatal("a missing sensor's stale value was sent")
	}
	for name, mutate := range map[string]func(b []byte){
		"absent value not 0":  func(b []byte) { b[12] = 1 },
		"three sensors":       func(b []byte) { b[at] = 3 },
		"padding bits set":    func(b []byte) { b[at] = 5; b[at+2] |= 1 },
		"state bytes cut off": nil,
	} {
		bad := bytes.Clone(b)
		if mutate == nil {
			bad = bad[:at+1]
		} else {
			mutate(bad)
		}
		if _, err := ParseV2Payload(bad); !errors.Is(err, ErrV2Payload) {
			t.Errorf("%s: got %v, want it refused", name, err)
		}
	}
}

// TestV2ValuesFollowTheFieldTable: V2Values.Fields gives field f the struct
// field whose JSON key is Fields[f].Name, one struct field a row.
func TestV2ValuesFollowTheFieldTable(t *testing.T) {
	var v V2Values
	for f, p := range v.Fields() {
		*p = float64(f + 1)
	}
	rv := reflect.ValueOf(v)
	if rv.NumField() != int(NumFields) {
		t.Fatalf("V2Values has %d fields, the table %d rows", rv.NumField(), NumFields)
	}
	for i := range rv.NumField() {
		tag := rv.Type().Field(i).Tag.Get("json")
		f := Field(rv.Field(i).Float() - 1)
		if f >= NumFields || Fields[f].Name != tag {
			t.Errorf("V2Values.%s (JSON %q) is row %d", rv.Type().Field(i).Name, tag, f)
		}
	}
	a := v.Array()
	for f, p := range v.Fields() {
		if a[f] != *p {
			t.Errorf("Array()[%s] = %v, Fields() has %v", Field(f), a[f], *p)
		}
	}
	if back := ValuesOf(a); back != v {
		t.Errorf("ValuesOf(Array()) = %+v, want %+v", back, v)
	}
}
