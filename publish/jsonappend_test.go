package publish

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// marshalStd is what JSONMessage published before appendReadingJSON.
func marshalStd(j *jsonReading) []byte {
	b, _ := json.Marshal(j)
	return b
}

// randomReading is a reading of either protocol with values, times, pulse
// samples and sensor states drawn from rng, most of them as devices make
// them and some at the edges of what encoding/json writes differently.
func randomReading(rng *rand.Rand) *bus.Reading {
	r := reading("dev-"+strconv.Itoa(rng.IntN(100000)), rng.IntN(5000))
	r.Received = time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).UTC()
	if rng.IntN(4) == 0 {
		return r // legacy
	}
	r.Protocol, r.Seq = bus.ProtocolV2, rng.Uint64()>>rng.IntN(64)
	if rng.IntN(8) > 0 {
		r.DeviceTime = time.UnixMilli(r.Received.UnixMilli() - rng.Int64N(5000)).UTC()
	}
	for s := range r.Sensors {
		r.Sensors[s] = wire.SensorState(rng.IntN(4))
	}
	w := r.Values.Wire()
	for f := range wire.NumFields {
		if r.Sensors.Absent(f) {
			w[f] = ""
		}
	}
	r.SetWire(&w)
	if rng.IntN(6) > 0 {
		n := rng.IntN(wire.MaxPulseSamples + 1)
		p := &wire.PulseBatch{Rate: float64(1 + rng.IntN(wire.MaxPulseRate)), Start: r.DeviceTime.UnixMilli(), Samples: make([]float64, n)}
		for i := range p.Samples {
			switch rng.IntN(20) {
			case 0: // anything, exponents included
				p.Samples[i] = math.Float64frombits(rng.Uint64())
			case 1:
				p.Samples[i] = rng.Float64() * 1e-7
			case 2:
				p.Samples[i] = -rng.Float64() * 1e22
			default: // as decrypt makes them
				p.Samples[i] = wire.PulseVolts(uint16(rng.IntN(wire.PulseMaxCode + 1)))
			}
		}
		if n == 0 && rng.IntN(2) == 0 {
			p.Samples = nil
		}
		r.Pulse = p
	}
	return r
}

func jsonOf(r *bus.Reading) jsonReading {
	j := jsonReading{Device: r.Device, Values: r.Values, Received: r.Received, DeviceTime: r.DeviceTime, Seq: r.Seq, Pulse: batchOf(r)}
	if r.Protocol == bus.ProtocolV2 {
		j.Sensors = &r.Sensors
	}
	return j
}

// TestReadingJSONMatchesEncodingJSON: the hand-written JSON of a reading,
// and of its pulse batch, is byte for byte what encoding/json writes, on
// readings as devices make them and at the edges (NaN, exponents, strings
// to escape, years beyond RFC 3339), where it falls back.
func TestReadingJSONMatchesEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(t *testing.T, j *jsonReading) {
		t.Helper()
		if got, want := appendReadingJSON([]byte("x"), j), append([]byte("x"), marshalStd(j)...); !bytes.Equal(got, want) {
			t.Fatalf("reading JSON differs:\n got %s\nwant %s", got, want)
		}
		if j.Pulse != nil {
			want, _ := json.Marshal(j.Pulse)
			if got := appendPulseBatchJSON(nil, j.Pulse); !bytes.Equal(got, want) {
				t.Fatalf("pulse batch JSON differs:\n got %s\nwant %s", got, want)
			}
		}
	}
	t.Run("random", func(t *testing.T) {
		for range 5000 {
			j := jsonOf(randomReading(rng))
			check(t, &j)
		}
	})
	edges := []struct {
		name string
		edit func(j *jsonReading)
	}{
		{"html in device", func(j *jsonReading) { j.Device = "a<b>&c" }},
		{"quote in value", func(j *jsonReading) { j.Values.Temp = `3"6` }},
		{"control in value", func(j *jsonReading) { j.Values.TempMcu = "2\x013" }},
		{"non-ASCII device", func(j *jsonReading) { j.Device = "gerät\u2028" }},
		{"invalid UTF-8", func(j *jsonReading) { j.Device = "dev\xff" }},
		{"year 10000", func(j *jsonReading) { j.Received = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"zone with seconds", func(j *jsonReading) {
			j.DeviceTime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("odd", 3661))
		}},
		{"local zone", func(j *jsonReading) { j.Received = time.Date(2026, 1, 1, 0, 0, 0, 5, time.FixedZone("cet", 3600)) }},
		{"NaN sample", func(j *jsonReading) { j.Pulse.Samples[0] = math.NaN() }},
		{"Inf rate", func(j *jsonReading) { j.Pulse.Rate = math.Inf(1) }},
		{"exponents", func(j *jsonReading) {
			j.Pulse.Samples = []float64{1e-7, 1e21, -1e-300, 5e-324, 1e20, 1e-6, math.MaxFloat64, math.Copysign(0, -1)}
		}},
		{"ten-thousandths", func(j *jsonReading) {
			j.Pulse.Samples = []float64{0.0001, -0.0001, 0.1, 0.12, 1.2345, -3.3, 999999999.9999, 1e9, -1e9, 123456.7891, 0.30000000000000004, 1.00005, 3.2999}
		}},
		{"nil samples", func(j *jsonReading) { j.Pulse.Samples = nil }},
		{"empty samples", func(j *jsonReading) { j.Pulse.Samples = []float64{} }},
		{"no pulse, no seq", func(j *jsonReading) { j.Pulse, j.Seq = nil, 0 }},
	}
	for _, tt := range edges {
		t.Run(tt.name, func(t *testing.T) {
			r := v2Reading("dev-1", 7, wire.SensorStates{})
			r.Pulse = &wire.PulseBatch{Rate: 250, Start: r.DeviceTime.UnixMilli(), Samples: []float64{0.5, 1.25, 3.3}}
			j := jsonOf(r)
			tt.edit(&j)
			check(t, &j)
		})
	}
}

// FuzzReadingJSON: whatever a reading holds, the hand-written JSON is
// encoding/json's.
func FuzzReadingJSON(f *testing.F) {
	f.Add("dev-1", "36.600", int64(1764000000123), uint64(42), 250.0, 0.5, 1e-7, uint8(0))
	f.Add("a<b", "", int64(-62135596800000), uint64(0), math.Inf(1), math.NaN(), 1e21, uint8(0x55))
	f.Fuzz(func(t *testing.T, device, value string, ms int64, seq uint64, rate, s1, s2 float64, states uint8) {
		r := v2Reading("x", 1, wire.SensorStates{})
		r.Device, r.Values.Temp, r.Seq = device, value, seq
		r.Received = time.UnixMilli(ms).UTC()
		r.DeviceTime = time.UnixMilli(ms / 2)
		for s := range r.Sensors {
			r.Sensors[s] = wire.SensorState(states >> (2 * s) & 3)
		}
		r.Pulse = &wire.PulseBatch{Rate: rate, Start: ms, Samples: []float64{s1, s2}}
		j := jsonOf(r)
		if got, want := appendReadingJSON(nil, &j), marshalStd(&j); !bytes.Equal(got, want) {
			t.Fatalf("reading JSON differs:\n got %s\nwant %s", got, want)
		}
	})
}

// BenchmarkJSONMessage is the JSON message of a v2 reading with its pulse
// batch (25 samples: 10 readings/s at 250 Hz; 250: 1/s) and of a legacy
// reading, hand-written ("append") against encoding/json ("encoding/json").
func BenchmarkJSONMessage(b *testing.B) {
	for _, tc := range []struct {
		name    string
		samples int
	}{{"legacy", -1}, {"v2-25", 25}, {"v2-250", 250}} {
		r := reading("iot_med_dev_01", 5)
		if tc.samples >= 0 {
			r = v2Reading("iot_med_dev_01", 5, wire.SensorStates{})
			p := &wire.PulseBatch{Rate: 250, Start: r.DeviceTime.UnixMilli(), Samples: make([]float64, tc.samples)}
			for i := range p.Samples {
				p.Samples[i] = wire.PulseVolts(uint16(1500 + 900*math.Sin(float64(i)/10)))
			}
			r.Pulse = p
		}
		b.Run(tc.name+"/append", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = JSONMessage("Pico", r)
			}
		})
		b.Run(tc.name+"/encoding-json", func(b *testing.B) {
			j := jsonOf(r)
			b.ReportAllocs()
			for b.Loop() {
				_ = marshalStd(&j)
			}
		})
	}
}

// TestTenThousandths: every 12-bit pulse code's volts, and whole and
// 4-decimal numbers across magnitudes, format as strconv's shortest form.
func TestTenThousandths(t *testing.T) {
	check := func(f float64) {
		t.Helper()
		want, _ := json.Marshal(f)
		if got, _ := appendFloat(nil, f); !bytes.Equal(got, want) {
			t.Fatalf("%v: got %s, want %s", f, got, want)
		}
	}
	for c := range wire.PulseMaxCode + 1 {
		check(wire.PulseVolts(uint16(c)))
		check(-wire.PulseVolts(uint16(c)))
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200000 {
		scale := math.Pow(10, float64(rng.IntN(14)))
		check(float64(rng.Int64N(int64(scale))) / 1e4)
		check(math.Round(rng.NormFloat64()*scale) / 1e4)
		check(rng.NormFloat64() * scale)
	}
}

// TestJSONSizeHint: a v2 reading's JSON, with a full pulse batch of 25 or
// 250 samples and long ids, fits jsonSizeHint (one allocation).
func TestJSONSizeHint(t *testing.T) {
	for _, n := range []int{0, 25, 250} {
		r := v2Reading("iot_med_dev_0123456789", 5, wire.SensorStates{})
		r.Seq = math.MaxUint64
		r.Received = time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.UTC)
		r.DeviceTime = r.Received.Add(-time.Millisecond)
		r.Pulse = &wire.PulseBatch{Rate: 250, Start: r.DeviceTime.UnixMilli(), Samples: make([]float64, n)}
		for i := range r.Pulse.Samples {
			r.Pulse.Samples[i] = wire.PulseVolts(uint16(1001 + i%3000)) // 4 decimals: the longest
		}
		if m := JSONMessage("Pico", r); len(m.Payload) > jsonSizeHint(n) {
			t.Errorf("%d samples: %d bytes, hint %d", n, len(m.Payload), jsonSizeHint(n))
		}
	}
}
