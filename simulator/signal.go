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
}

// NewSignal returns a generator seeded with seed, for a device sending rate
// readings per second.
func NewSignal(seed int64, rate float64) *Signal {
	if rate <= 0 {
		rate = 20
	}
	rng := rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15))
	return &Signal{
		rng:       rng,
		rate:      rate,
		bodyBase:  36.5 + rng.Float64()*0.5,
		ecg:       NewBeatECG(seed, 60+rng.Float64()*40, 1+rng.Float64()*3),
		ambient:   22 + rng.Float64()*2,
		mcuWarmup: 60 + rng.Float64()*60,
	}
}

// Next returns reading number seq (from 1).
func (s *Signal) Next(seq uint64) wire.Reading {
	t := float64(seq) / s.rate
	s.drift += (s.rng.Float64() - 0.5) * 0.002
	s.drift = math.Max(-0.3, math.Min(0.3, s.drift))
	body := s.bodyBase + s.drift + 0.05*math.Sin(2*math.Pi*t/600)
	// The ECG runs at PulseRate between readings; a legacy reading carries
	// its last sample (the sensor's 1.5 V offset added), v2 the whole batch.
	n := max(1, int(math.Round(PulseRate/s.rate)))
	s.batch = s.batch[:0]
	for range n {
		s.batch = append(s.batch, math.Round((1.5+s.ecg.Advance(1.0/PulseRate))*1000)/1000)
	}
	pulse := s.batch[len(s.batch)-1] + (s.rng.Float64()-0.5)*0.02
	warm := 1 - math.Exp(-t/s.mcuWarmup)
	return wire.Reading{
		wire.FormatValue(body),
		wire.FormatValue(s.ambient + 6*warm + (s.rng.Float64()-0.5)*0.2),
		wire.FormatValue(pulse),
		wire.FormatValue((s.rng.Float64() - 0.5) * 0.04),
		wire.FormatValue((s.rng.Float64() - 0.5) * 0.04),
		wire.FormatValue(math.Abs(0.98 + (s.rng.Float64()-0.5)*0.04)), // never negative: carries sequence digits
		wire.FormatValue(s.ambient + 3*warm + (s.rng.Float64()-0.5)*0.2),
	}
}

// Batch returns the pulse samples, at PulseRate, taken for the last reading.
func (s *Signal) Batch() []float64 { return s.batch }
