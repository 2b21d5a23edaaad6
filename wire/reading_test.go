package wire

import (
	"errors"
	"testing"
)

const sample = `{"Temp":"36.600","TempMcu":"23.700","PulseSig":"1.735","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.98","TempMpu":"23.400"}`

func TestParseReading(t *testing.T) {
	want := Reading{"36.600", "23.700", "1.735", "0.000", "-0.02", "0.98", "23.400"}
	tests := []struct {
		name    string
		in      string
		wantErr error
	}{
		{name: "device text", in: sample},
		{name: "spaces", in: ` { "Temp" : "36.600", "TempMcu":"23.700","PulseSig":"1.735","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.98","TempMpu":"23.400" } `},
		{name: "other order and extra field", in: `{"TempMpu":"23.400","x":[1,2],"Temp":"36.600","TempMcu":"23.700","PulseSig":"1.735","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.98"}`},
		{name: "escaped key", in: `{"\u0054emp":"36.600","TempMcu":"23.700","PulseSig":"1.735","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.98","TempMpu":"23.400"}`},
		{name: "missing field", in: `{"Temp":"36.600","TempMcu":"23.700","PulseSig":"1.735","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.98"}`, wantErr: ErrMissingField},
		{name: "number not string", in: `{"Temp":36.6,"TempMcu":"23.700","PulseSig":"1.735","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.98","TempMpu":"23.400"}`, wantErr: ErrBadJSON},
		{name: "not decimal", in: `{"Temp":"NaN","TempMcu":"23.700","PulseSig":"1.735","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.98","TempMpu":"23.400"}`, wantErr: ErrBadValue},
		{name: "exponent", in: `{"Temp":"3e1","TempMcu":"23.700","PulseSig":"1.735","Acel_x":"0.000","Acel_y":"-0.02","Acel_z":"0.98","TempMpu":"23.400"}`, wantErr: ErrBadValue},
		{name: "trailing garbage", in: sample + "x", wantErr: ErrBadJSON},
		{name: "truncated", in: sample[:50], wantErr: ErrBadJSON},
		{name: "empty", in: ``, wantErr: ErrBadJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseReading([]byte(tt.in))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r != want {
				t.Fatalf("got %v", r)
			}
		})
	}
}

func TestReadingAppendJSON(t *testing.T) {
	r, err := ParseReading([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(r.AppendJSON(nil)); got != sample {
		t.Fatalf("got %s", got)
	}
	if r.Float(AcelY) != -0.02 {
		t.Fatalf("Float(AcelY) = %v", r.Float(AcelY))
	}
}

func TestIsDecimal(t *testing.T) {
	for s, want := range map[string]bool{
		"36.600": true, "-0.02": true, "+1": true, "0": true, ".5": true, "5.": true,
		"": false, "-": false, ".": false, "1.2.3": false, "1e3": false, "inf": false, "0x1p3": false, " 1": false,
		"123456789012345678901234567890123": false,
	} {
		if got := IsDecimal(s); got != want {
			t.Errorf("IsDecimal(%q) = %v", s, got)
		}
	}
}

func FuzzParseReading(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte(`{"Temp":"1"}`))
	f.Add([]byte(`{"\u0054emp":"36.600"}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := ParseReading(in)
		if err != nil {
			return
		}
		// A valid reading re-encodes to text that parses to the same reading.
		again, err := ParseReading(r.AppendJSON(nil))
		if err != nil || again != r {
			t.Fatalf("round trip of %q: %v %v", in, again, err)
		}
	})
}

// FuzzLegacyOpen feeds arbitrary ciphertext to the decoder: it must never
// panic, and anything it accepts must be a valid reading that re-seals to
// the same ciphertext.
func FuzzLegacyOpen(f *testing.F) {
	k := NewLegacyKey(Device{ID: "d", Key: [16]byte([]byte("1234567890123456")), IV: [16]byte([]byte("AAAAAAAAAAAAAAAA"))})
	for _, v := range []Variant{Pico, Pseudo} {
		ct, _ := DecodeFrame(nil, k.Seal(nil, v, []byte(sample)))
		f.Add(ct)
	}
	f.Add([]byte{})
	f.Add(make([]byte, 17))
	f.Fuzz(func(t *testing.T, ct []byte) {
		r, v, err := k.Open(nil, ct, Pico)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
		_ = v
	})
}
