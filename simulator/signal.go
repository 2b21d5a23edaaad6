package simulator

import (
	"math"
	"math/rand/v2"

	"github.com/medpipe/medpipe/wire"
)

// Signal generates plausible readings for one device: body temperature with
// a slow drift, an ECG from the McSharry dynamical model (see ECG) with a
// per-device heart rate and variability, an accelerometer at rest near
// (0, 0, 1) g with noise, and MCU/MPU temperatures that warm up after
// power-on. It is deterministic for a given seed.
type Signal struct {
	rng       *rand.Rand
	rate      float64 // readings per second, for the time axis
	bodyBase  float64
	ecg       *BeatECG
	batch     []float64 // the ECG at PulseRate since the previous reading
	drift     float64
	ambient   float64
	mcuWarmup float64

	// FeverPerHour is the chance per hour that a fever episode starts
	// (0: never): body temperature rises 1.5-2.5 °C over an hour, stays,
	// and falls back over the next.
	FeverPerHour float64
	feverStart   float64 // seconds since power-on; negative: none
	feverPeak    float64

	activity      activity
	activityUntil float64
	fallAt        float64 // when a requested fall starts; negative: none
}

// activity is what the wearer is doing, for the accelerometer.
type activity int

const (
	resting activity = iota // sitting or standing still: gravity on z
	walking                 // 1.8 steps/s: vertical and forward sway
	lying                   // after a fall: gravity on x
)

// Fall makes the wearer fall now: half a second of free fall, an impact
// of about 3 g, then a minute lying on the floor.
func (s *Signal) Fall() { s.fallAt = -2 }

// NewSignal returns a generator seeded with seed, for a device sending rate
// readings per second.
func NewSignal(seed int64, rate float64) *Signal {
	if rate <= 0 {
		rate = DefaultRate
	}
	rng := rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15))
	return &Signal{
		rng:        rng,
		rate:       rate,
		bodyBase:   36.5 + rng.Float64()*0.5,
		ecg:        NewBeatECG(seed, 60+rng.Float64()*40, 1+rng.Float64()*3),
		ambient:    22 + rng.Float64()*2,
		mcuWarmup:  60 + rng.Float64()*60,
		feverStart: -1,
		fallAt:     -1,
	}
}

// Next returns reading number seq (from 1).
func (s *Signal) Next(seq uint64) wire.Reading {
	t := float64(seq) / s.rate
	s.drift += (s.rng.Float64() - 0.5) * 0.002
	s.drift = math.Max(-0.3, math.Min(0.3, s.drift))
	body := s.bodyBase + s.drift + 0.05*math.Sin(2*math.Pi*t/600) + s.fever(t)
	ax, ay, az := s.accelerometer(t)
	// The ECG runs at PulseRate between readings; a legacy reading carries
	// its last sample (the sensor's 1.5 V offset added), v2 the whole batch.
	n := max(1, int(math.Round(PulseRate/s.rate)))
	s.batch = s.batch[:0]
	for range n {
		s.batch = append(s.batch, math.Round((1.5+s.ecg.Advance(1.0/PulseRate))*1000)/1000)
	}
	if len(s.batch) > MaxPulseBatch {
		s.batch = s.batch[len(s.batch)-MaxPulseBatch:]
	}
	pulse := s.batch[len(s.batch)-1] + (s.rng.Float64()-0.5)*0.02
	warm := 1 - math.Exp(-t/s.mcuWarmup)
	return wire.Reading{
		wire.FormatValue(body),
		wire.FormatValue(s.ambient + 6*warm + (s.rng.Float64()-0.5)*0.2),
		wire.FormatValue(pulse),
		wire.FormatValue(ax),
		wire.FormatValue(ay),
		wire.FormatValue(math.Abs(az)), // never negative: carries sequence digits
		wire.FormatValue(s.ambient + 3*warm + (s.rng.Float64()-0.5)*0.2),
	}
}

// Batch returns the pulse samples, at PulseRate, taken for the last reading.
func (s *Signal) Batch() []float64 { return s.batch }

// fever is the temperature an ongoing fever episode adds at time t.
func (s *Signal) fever(t float64) float64 {
	if s.feverStart < 0 {
		if s.FeverPerHour > 0 && s.rng.Float64() < s.FeverPerHour/3600/s.rate {
			s.feverStart, s.feverPeak = t, 1.5+s.rng.Float64()
		}
		return 0
	}
	h := (t - s.feverStart) / 3600
	switch {
	case h < 1:
		return s.feverPeak * h
	case h < 3:
		return s.feverPeak
	case h < 4:
		return s.feverPeak * (4 - h)
	}
	s.feverStart = -1
	return 0
}

// accelerometer returns x, y, z in g at time t: rest and walking alternate
// every few minutes; a requested fall overrides both.
func (s *Signal) accelerometer(t float64) (x, y, z float64) {
	noise := func() float64 { return (s.rng.Float64() - 0.5) * 0.04 }
	if s.fallAt == -2 { // requested by Fall: starts now
		s.fallAt = t
	}
	if s.fallAt >= 0 {
		switch d := t - s.fallAt; {
		case d < 0.5: // free fall
			return noise(), noise(), 0.05 + noise()
		case d < 0.7: // impact
			return 1.2 + noise(), 0.8 + noise(), 2.8 + noise()
		case d < 60:
			s.activity = lying
		default:
			s.fallAt, s.activity, s.activityUntil = -1, resting, t+60
		}
	}
	if s.activity != lying && t >= s.activityUntil {
		s.activity = resting + walking - s.activity // alternate
		s.activityUntil = t + 60 + s.rng.Float64()*240
	}
	switch s.activity {
	case walking:
		step := 2 * math.Pi * 1.8 * t
		return 0.25*math.Sin(step) + noise(), 0.1*math.Sin(step/2) + noise(), 1 + 0.3*math.Sin(step) + noise()
	case lying:
		return 0.98 + noise(), noise(), 0.05 + noise()
	}
	return noise(), noise(), 0.98 + noise()
}
