package simulator

import (
	"math"
	"math/rand/v2"

	"github.com/medpipe/medpipe/wire"
)

// Signal generates plausible readings for one device: body temperature with
// a slow drift, a periodic pulse waveform, an accelerometer at rest near
// (0, 0, 1) g with noise, and MCU/MPU temperatures that warm up after power-on.
// It is deterministic for a given seed. The fuller physiological models
// (ECG, posture, fever) belong to the large simulator.
type Signal struct {
	rng       *rand.Rand
	rate      float64 // readings per second, for the time axis
	bodyBase  float64
	heartHz   float64
	phase     float64
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
		heartHz:   (60 + rng.Float64()*40) / 60,
		phase:     rng.Float64(),
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
	pulse := s.PulseAt(t) + (s.rng.Float64()-0.5)*0.05
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

// PulseAt is the pulse sensor's voltage t seconds after power-on: a sharp
// systolic peak and a smaller dicrotic wave, 0.5-3 V.
func (s *Signal) PulseAt(t float64) float64 {
	beat := math.Mod(t*s.heartHz+s.phase, 1)
	return 1.0 + 1.7*math.Exp(-math.Pow((beat-0.15)/0.05, 2)) + 0.4*math.Exp(-math.Pow((beat-0.45)/0.08, 2))
}
