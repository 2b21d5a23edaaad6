package simulator

import (
	"math"
	"math/rand/v2"
	"sync"
)

// templateSize is the number of phase points of the beat template.
const templateSize = 2048

var (
	templateOnce sync.Once
	template     [templateSize]float64
)

// beatTemplate integrates the dynamical model once, at a constant 72
// beats/min, and records one beat in time order, which at constant speed is
// phase order. The events are scaled by the angular speed, so a beat's
// shape in phase does not depend on the rate: replaying the template at
// each beat's own speed gives the model's waveform for a table lookup per
// sample instead of integrating at 512 Hz, which is what lets one process
// run ten thousand devices.
func beatTemplate() *[templateSize]float64 {
	templateOnce.Do(func() {
		e := NewECG(1, 72, 0)                 // no variability: every beat at the same speed
		e.noBreath = true                     // a periodic beat; BeatECG adds the breathing
		e.Advance(10)                         // settle onto the limit cycle
		for prev := math.Atan2(e.y, e.x); ; { // to the start of a beat: θ wraps from +π to -π
			e.Advance(0.0002)
			theta := math.Atan2(e.y, e.x)
			if prev > 0 && theta < 0 {
				break
			}
			prev = theta
		}
		period := 2 * math.Pi / e.omega
		for i := range template {
			template[i] = e.Advance(period / templateSize)
		}
	})
	return &template
}

// respiration is the baseline wander of breathing at time t, in mV.
func respiration(t float64) float64 { return 0.015 * ecgScale * math.Sin(2*math.Pi*0.25*t) }

// BeatECG replays the model's beat template, each beat at a heart rate
// drawn around the mean (heart rate variability), over the respiratory
// baseline: the fast ECG every simulated device runs.
type BeatECG struct {
	rng       *rand.Rand
	hr, hrStd float64
	phase     float64 // 0 to 1 within the current beat
	beatHz    float64
	t         float64
}

// NewBeatECG returns the fast generator for hr beats/min with beat-to-beat
// standard deviation hrStd, deterministic for a seed.
func NewBeatECG(seed int64, hr, hrStd float64) *BeatECG {
	b := &BeatECG{rng: rand.New(rand.NewPCG(uint64(seed), 0xbea7)), hr: hr, hrStd: hrStd}
	b.phase = b.rng.Float64()
	b.newBeat()
	beatTemplate()
	return b
}

func (b *BeatECG) newBeat() {
	b.beatHz = math.Max(30, math.Min(220, b.hr+b.rng.NormFloat64()*b.hrStd)) / 60
}

// Advance moves dt seconds on and returns the ECG in millivolts.
func (b *BeatECG) Advance(dt float64) float64 {
	b.t += dt
	b.phase += dt * b.beatHz
	for b.phase >= 1 {
		b.phase--
		b.newBeat()
	}
	return beatTemplate()[int(b.phase*templateSize)%templateSize] + respiration(b.t)
}
