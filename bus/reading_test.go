package bus

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/medpipe/medpipe/wire"
)

// sampleReading is a legacy reading as decrypt stores it.
func sampleReading() *Reading {
	r := &Reading{Device: "pico-00042", Protocol: ProtocolLegacy, Variant: "pico",
		Received: time.Date(2026, 12, 2, 15, 0, 0, 123456789, time.UTC), Conn: "a0y6zith-113", FrameSeq: 1234, RawSeq: 987654,
		Remote: "192.168.1.20:53412", Local: "10.0.0.5:9000"}
	w := wire.Reading{"36.61", "41.20", "1.6523", "0.0123", "-0.9981", "0.0452", "30.15"}
	r.SetWire(&w)
	return r
}

// sampleV2Reading is a v2 reading with a pulse batch.
func sampleV2Reading() *Reading {
	r := sampleReading()
	r.Protocol, r.Variant, r.Seq = ProtocolV2, "", 1<<40+7
	r.DeviceTime = time.Date(2026, 12, 2, 14, 59, 59, 999000000, time.UTC)
	r.Pulse = &wire.PulseBatch{Rate: 250, Start: 1796223599999, Samples: []float64{1.5, 1.625, -0.25}}
	return r
}

func TestReadingBodyRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    *Reading
	}{
		{"legacy", sampleReading()},
		{"v2 with pulse", sampleV2Reading()},
		{"empty addresses", func() *Reading { r := sampleReading(); r.Remote, r.Local, r.Conn = "", "", ""; return r }()},
		{"v2 temperature sensor missing", func() *Reading {
			r := sampleV2Reading()
			r.Sensors[wire.TempSensor] = wire.SensorMissing
			r.Values.Temp, r.Numbers.Temp = "", 0
			return r
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := AppendReading(nil, tc.r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := UnmarshalReading(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.r) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tc.r)
			}
			j, err := MarshalReading(tc.r)
			if err != nil {
				t.Fatal(err)
			}
			fromJSON, err := UnmarshalReading(j)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(fromJSON, tc.r) {
				t.Fatalf("JSON body (stored before the compact one) decodes differently:\n got %+v\nwant %+v", fromJSON, tc.r)
			}
			t.Logf("compact %d bytes, JSON %d bytes", len(b), len(j))
		})
	}
}

// appendReadingV1 writes a body as V1 did: the same fields, the pulse
// batch as its JSON.
func appendReadingV1(t testing.TB, r *Reading) []byte {
	t.Helper()
	var pulse []byte
	if r.Pulse != nil {
		var err error
		if pulse, err = json.Marshal(r.Pulse); err != nil {
			t.Fatal(err)
		}
	}
	dst := []byte{readingBodyV1}
	for _, s := range [...]string{r.Device, r.Protocol, r.Variant,
		r.Values.Temp, r.Values.TempMcu, r.Values.PulseSig, r.Values.AcelX, r.Values.AcelY, r.Values.AcelZ, r.Values.TempMpu} {
		dst = appendString(dst, s)
	}
	n := &r.Numbers
	for _, f := range [...]float64{n.Temp, n.TempMcu, n.PulseSig, n.AcelX, n.AcelY, n.AcelZ, n.TempMpu} {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(f))
	}
	dst = binary.AppendUvarint(dst, r.Seq)
	dst = appendTime(dst, r.DeviceTime)
	dst = binary.AppendUvarint(dst, uint64(len(pulse)))
	dst = append(dst, pulse...)
	return append(dst, appendTail(t, r)...)
}

// TestReadingBodyV1StillDecodes: READINGS stored with the pulse batch as
// JSON (V1) decode as before; pulse batches with and without samples
// round-trip through V2 exactly.
func TestReadingBodyV1StillDecodes(t *testing.T) {
	noSamples := sampleV2Reading()
	noSamples.Pulse.Samples = nil
	empty := sampleV2Reading()
	empty.Pulse.Samples = []float64{}
	for name, r := range map[string]*Reading{"legacy": sampleReading(), "v2 with pulse": sampleV2Reading(), "pulse without samples": noSamples} {
		got, err := UnmarshalReading(appendReadingV1(t, r))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("%s: V1 body decodes as\n %+v\nwant %+v", name, got, r)
		}
	}
	for name, r := range map[string]*Reading{"pulse without samples": noSamples, "pulse with an empty sample list": empty} {
		b, err := AppendReading(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != readingBodyV3 {
			t.Fatalf("body starts with %#x, want V3", b[0])
		}
		got, err := UnmarshalReading(b)
		if err != nil || !reflect.DeepEqual(got, r) {
			t.Fatalf("%s: round trip gives %+v, %v", name, got, err)
		}
	}
}

// adcReading is a v2 reading whose pulse samples came from ADC codes, as
// every reading decrypt makes does.
func adcReading(samples int) *Reading {
	r := sampleV2Reading()
	r.Pulse.Samples = make([]float64, samples)
	for i := range r.Pulse.Samples {
		r.Pulse.Samples[i] = wire.PulseVolts(uint16((i * 37) % (wire.PulseMaxCode + 1)))
	}
	return r
}

// TestReadingBodyPulseCodes: samples that are ADC codes' values are stored
// as the codes (2 bytes each) and come back bit for bit; a batch with one
// sample that is not (a reading from elsewhere, -0) keeps every sample's
// IEEE 754 bits.
func TestReadingBodyPulseCodes(t *testing.T) {
	notACode := adcReading(250)
	notACode.Pulse.Samples[100] = 1.00005
	negZero := adcReading(250)
	negZero.Pulse.Samples[0] = math.Copysign(0, -1)
	for _, tc := range []struct {
		name      string
		r         *Reading
		perSample int
	}{
		{"ADC codes", adcReading(250), 2},
		{"every code", adcReading(wire.PulseMaxCode + 1), 2},
		{"one sample not a code", notACode, 8},
		{"negative zero", negZero, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := AppendReading(nil, tc.r)
			if err != nil {
				t.Fatal(err)
			}
			noPulse := *tc.r
			noPulse.Pulse = &wire.PulseBatch{Rate: tc.r.Pulse.Rate, Start: tc.r.Pulse.Start, Samples: []float64{}}
			base, _ := AppendReading(nil, &noPulse)
			if got, want := len(b)-len(base), tc.perSample*len(tc.r.Pulse.Samples); got < want || got > want+4 {
				t.Errorf("samples take %d bytes, want %d a sample (%d)", got, tc.perSample, want)
			}
			got, err := UnmarshalReading(b)
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range got.Pulse.Samples {
				if math.Float64bits(v) != math.Float64bits(tc.r.Pulse.Samples[i]) {
					t.Fatalf("sample %d: got %v, want %v", i, v, tc.r.Pulse.Samples[i])
				}
			}
			if !reflect.DeepEqual(got, tc.r) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tc.r)
			}
		})
	}
	b, _ := AppendReading(nil, adcReading(3))
	bad := append([]byte(nil), b...)
	// The first code's high byte, after the encoding byte: 0xFF makes it
	// over the ADC's range.
	i := len(b) - len(appendTail(t, adcReading(3))) - 5
	bad[i] = 0xFF
	if _, err := UnmarshalReading(bad); err == nil {
		t.Fatal("a code over the ADC's range decoded")
	}
}

// appendTail is what AppendReading writes after the pulse batch.
func appendTail(t testing.TB, r *Reading) []byte {
	t.Helper()
	dst := appendTime(nil, r.Received)
	dst = appendString(dst, r.Conn)
	dst = binary.AppendUvarint(dst, r.FrameSeq)
	dst = binary.AppendUvarint(dst, r.RawSeq)
	dst = appendString(dst, r.Remote)
	return appendString(dst, r.Local)
}

// TestReadingBodyV2StillDecodes: a body as decrypt wrote it before V3
// (testdata/reading-body-v2.bin: a v2 reading, its temperature sensor
// missing, five pulse samples as IEEE 754 bits) decodes to that reading.
func TestReadingBodyV2StillDecodes(t *testing.T) {
	b, err := os.ReadFile("testdata/reading-body-v2.bin")
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != readingBodyV2 {
		t.Fatalf("fixture starts with %#x, want V2", b[0])
	}
	want := sampleV2Reading()
	want.Pulse.Samples = []float64{1.5, 1.6248, 0.0008, 3.2992, 0}
	want.Sensors[wire.TempSensor] = wire.SensorMissing
	want.Values.Temp, want.Numbers.Temp = "", 0
	got, err := UnmarshalReading(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("V2 body decodes as\n %+v\nwant %+v", got, want)
	}
}

func TestReadingBodyTruncated(t *testing.T) {
	b, err := AppendReading(nil, sampleV2Reading())
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n < len(b); n++ {
		if _, err := UnmarshalReading(b[:n]); err == nil {
			t.Fatalf("a body cut to %d of %d bytes decoded", n, len(b))
		}
	}
	if _, err := UnmarshalReading(append(b, 0)); err == nil {
		t.Fatal("a body with a trailing byte decoded")
	}
}

func FuzzUnmarshalReading(f *testing.F) {
	missing := sampleV2Reading()
	missing.Sensors[wire.TempSensor], missing.Values.Temp, missing.Numbers.Temp = wire.SensorMissing, "", 0
	for _, r := range []*Reading{sampleReading(), sampleV2Reading(), missing} {
		b, _ := AppendReading(nil, r)
		f.Add(b)
		j, _ := MarshalReading(r)
		f.Add(j)
	}
	f.Add([]byte{readingBodyV1})
	f.Add([]byte{readingBodyV2})
	f.Add([]byte{readingBodyV3})
	if v2, err := os.ReadFile("testdata/reading-body-v2.bin"); err == nil {
		f.Add(v2)
	}
	f.Add(appendReadingV1(f, sampleV2Reading()))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := UnmarshalReading(b)
		if err != nil {
			return
		}
		// What decodes re-encodes to a body that decodes the same.
		again, err := AppendReading(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := UnmarshalReading(again)
		if err != nil {
			t.Fatalf("re-encoded reading does not decode: %v", err)
		}
		if r2.Device != r.Device || r2.Values != r.Values || r2.Sensors != r.Sensors || r2.RawSeq != r.RawSeq || !r2.Received.Equal(r.Received) {
			t.Fatalf("re-encoded reading differs: %+v vs %+v", r2, r)
		}
		if (r.Pulse == nil) != (r2.Pulse == nil) {
			t.Fatalf("re-encoded pulse batch %v, was %v", r2.Pulse, r.Pulse)
		}
		if r.Pulse != nil {
			if len(r2.Pulse.Samples) != len(r.Pulse.Samples) || math.Float64bits(r2.Pulse.Rate) != math.Float64bits(r.Pulse.Rate) || r2.Pulse.Start != r.Pulse.Start {
				t.Fatalf("re-encoded pulse batch %+v, was %+v", r2.Pulse, r.Pulse)
			}
			for i, v := range r.Pulse.Samples {
				if math.Float64bits(r2.Pulse.Samples[i]) != math.Float64bits(v) {
					t.Fatalf("re-encoded sample %d is %v, was %v", i, r2.Pulse.Samples[i], v)
				}
			}
		}
	})
}

// BenchmarkReadingCodec compares READINGS bodies: the compact one decrypt
// writes and publish reads, against JSON.
func BenchmarkReadingCodec(b *testing.B) {
	r := sampleReading()
	j, err := MarshalReading(r)
	if err != nil {
		b.Fatal(err)
	}
	c, err := AppendReading(nil, r)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode/compact", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = AppendReading(buf[:0], r)
		}
	})
	b.Run("encode/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = MarshalReading(r)
		}
	})
	// A v2 reading of a device at 1 reading/s: 250 pulse samples, as
	// decrypt makes them of the 12-bit codes of its payload.
	v2 := adcReading(250)
	v2c, err := AppendReading(nil, v2)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode/v2-pulse-250/compact", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = AppendReading(buf[:0], v2)
		}
	})
	for _, body := range []struct {
		name string
		b    []byte
	}{{"compact", c}, {"json", j}, {"v2-pulse-250/compact", v2c}, {"v2-pulse-250/compact-v1", appendReadingV1(b, v2)}} {
		b.Run("decode/"+body.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body.b)))
			for b.Loop() {
				if _, err := UnmarshalReading(body.b); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestReadingSensors: a reading whose sensor is not ok carries the state,
// its value is null in JSON (never a 0), and a value under an absent
// sensor, or an absent value under an ok one, is refused.
func TestReadingSensors(t *testing.T) {
	r := sampleV2Reading()
	r.Sensors[wire.TempSensor] = wire.SensorMissing
	r.Values.Temp = ""
	j, err := MarshalReading(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"Temp":null`, `"sensors":{"temperature":"missing","mcu":"ok","pulse":"ok","motion":"ok"}`} {
		if !strings.Contains(string(j), want) {
			t.Errorf("JSON lacks %s: %s", want, j)
		}
	}
	healthy, _ := MarshalReading(sampleV2Reading())
	if strings.Contains(string(healthy), "sensors") {
		t.Errorf("all-ok states written: %s", healthy)
	}
	bad := *r
	bad.Values.Temp = "0.000"
	b, _ := AppendReading(nil, &bad)
	if _, err := UnmarshalReading(b); err == nil {
		t.Error("a value under a missing sensor accepted")
	}
	bad = *sampleV2Reading()
	bad.Values.Temp = ""
	b, _ = AppendReading(nil, &bad)
	if _, err := UnmarshalReading(b); err == nil {
		t.Error("an absent value under an ok sensor accepted")
	}
}

// TestValuesFollowTheFieldTable holds Values' fields, their JSON keys and
// Values.Fields to wire.Fields: field f's pointer is the struct field whose
// JSON key is wire.Fields[f].Name, and there is one struct field a row.
func TestValuesFollowTheFieldTable(t *testing.T) {
	var v Values
	for f, p := range v.Fields() {
		*p = wire.Fields[f].Name
	}
	rv := reflect.ValueOf(v)
	if rv.NumField() != int(wire.NumFields) {
		t.Fatalf("Values has %d fields, the table %d rows", rv.NumField(), wire.NumFields)
	}
	for i := range rv.NumField() {
		tag := rv.Type().Field(i).Tag.Get("json")
		if got := rv.Field(i).String(); got != tag {
			t.Errorf("Values.%s (JSON %q) is the table's %q", rv.Type().Field(i).Name, tag, got)
		}
	}
}

// TestAppendReadingV2: the body decrypt writes for a READINGS message of
// one reading is the previous release's (0xB2, samples as floats), byte
// for byte what that release wrote, and decodes to the reading.
func TestAppendReadingV2(t *testing.T) {
	r := sampleV2Reading()
	r.Pulse.Samples = []float64{1.5, 1.6248, 0.0008, 3.2992, 0}
	r.Sensors[wire.TempSensor] = wire.SensorMissing
	r.Values.Temp, r.Numbers.Temp = "", 0
	b, err := AppendReadingV2(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/reading-body-v2.bin")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("V2 body differs from the previous release's:\n got %x\nwant %x", b, want)
	}
	got, err := UnmarshalReading(b)
	if err != nil || !reflect.DeepEqual(got, r) {
		t.Fatalf("V2 body decodes as %+v, %v", got, err)
	}
}

// TestPulseCodeOf: every code's value maps back to that code; values
// that are no code's (between codes, out of range, -0, NaN) do not.
func TestPulseCodeOf(t *testing.T) {
	for c := uint16(0); c <= wire.PulseMaxCode; c++ {
		if got, ok := pulseCodeOf(wire.PulseVolts(c)); !ok || got != c {
			t.Fatalf("pulseCodeOf(PulseVolts(%d)) = %d, %v", c, got, ok)
		}
	}
	for _, v := range []float64{1.00005, -0.0008, 3.5, math.Copysign(0, -1), math.NaN(), math.Inf(1)} {
		if c, ok := pulseCodeOf(v); ok {
			t.Errorf("pulseCodeOf(%v) = %d, true", v, c)
		}
	}
}
