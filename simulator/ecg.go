package simulator

import (
	"math"
	"math/rand/v2"
)

// ECG generates a synthetic electrocardiogram with the dynamical model of
// McSharry, Clifford, Tarassenko and Smith, "A dynamical model for
// generating synthetic electrocardiogram signals", IEEE Trans. Biomed. Eng.
// 50(3), 2003: a point circles the unit limit cycle in the (x, y) plane at
// the angular speed of the heart rate, and z is pushed up or down by five
// Gaussian events (P, Q, R, S, T) at fixed angles of the cycle, around a
// respiratory baseline. Each beat's RR interval varies (heart rate
// variability), which changes the angular speed beat by beat.
type ECG struct {
	rng       *rand.Rand
	hr, hrStd float64 // mean heart rate (beats/min) and its standard deviation
	x, y, z   float64
	omega     float64 // angular speed of the current beat, rad/s
	t         float64
	lastTheta float64
	noBreath  bool // leave out the respiratory baseline (the beat template)
}

// The P, Q, R, S, T events: angle on the cycle, amplitude (mV) and width,
// from the paper's Table 1.
var (
	ecgTheta = [5]float64{-math.Pi / 3, -math.Pi / 12, 0, math.Pi / 12, math.Pi / 2}
	ecgA     = [5]float64{1.2, -5.0, 30.0, -7.5, 0.75}
	ecgB     = [5]float64{0.25, 0.1, 0.1, 0.1, 0.4}
)

// ecgStep is the integration step: 2 ms, well below the QRS width.
const ecgStep = 1.0 / 512

// NewECG returns a generator for a heart rate of hr beats per minute with
// beat-to-beat standard deviation hrStd, deterministic for a seed.
func NewECG(seed int64, hr, hrStd float64) *ECG {
	e := &ECG{rng: rand.New(rand.NewPCG(uint64(seed), 0xec9)), hr: hr, hrStd: hrStd, x: -1, y: 0}
	e.newBeat()
	e.lastTheta = math.Atan2(e.y, e.x)
	return e
}

// newBeat draws the next RR interval.
func (e *ECG) newBeat() {
	hr := e.hr + e.rng.NormFloat64()*e.hrStd
	hr = math.Max(30, math.Min(220, hr))
	e.omega = 2 * math.Pi * hr / 60
}

// derivatives of the model at the current state.
func (e *ECG) deriv(x, y, z, t float64) (dx, dy, dz float64) {
	alpha := 1 - math.Hypot(x, y)
	theta := math.Atan2(y, x)
	var z0 float64
	if !e.noBreath {
		z0 = respiration(t) / ecgScale // 0.25 Hz, 0.15 mV once scaled
	}
	var events float64
	for i := range ecgTheta {
		d := math.Remainder(theta-ecgTheta[i], 2*math.Pi)
		events += ecgA[i] * d * math.Exp(-d*d/(2*ecgB[i]*ecgB[i]))
	}
	// Scaling the events by the angular speed (per cycle rather than per
	// second) keeps the waves' heights independent of the heart rate.
	dz = -events*e.omega/(2*math.Pi) - (z - z0)
	return alpha*x - e.omega*y, alpha*y + e.omega*x, dz
}

// Advance integrates the model by dt seconds (fourth-order Runge-Kutta in
// steps of at most 2 ms) and returns the ECG in millivolts.
func (e *ECG) Advance(dt float64) float64 {
	for dt > 1e-12 {
		h := math.Min(dt, ecgStep)
		x, y, z, t := e.x, e.y, e.z, e.t
		k1x, k1y, k1z := e.deriv(x, y, z, t)
		k2x, k2y, k2z := e.deriv(x+h/2*k1x, y+h/2*k1y, z+h/2*k1z, t+h/2)
		k3x, k3y, k3z := e.deriv(x+h/2*k2x, y+h/2*k2y, z+h/2*k2z, t+h/2)
		k4x, k4y, k4z := e.deriv(x+h*k3x, y+h*k3y, z+h*k3z, t+h)
		e.x += h / 6 * (k1x + 2*k2x + 2*k3x + k4x)
		e.y += h / 6 * (k1y + 2*k2y + 2*k3y + k4y)
		e.z += h / 6 * (k1z + 2*k2z + 2*k3z + k4z)
		e.t += h
		dt -= h
		// A new beat starts each time the point crosses θ = π (mid diastole).
		theta := math.Atan2(e.y, e.x)
		if e.lastTheta > 0 && theta < 0 && e.lastTheta-theta > math.Pi {
			e.newBeat()
		}
		e.lastTheta = theta
	}
	// The model's z is in arbitrary units; the paper rescales it to the
	// usual ECG range, R peak about 1.2 mV at 72 beats/min.
	return e.z * ecgScale
}

const ecgScale = 24
