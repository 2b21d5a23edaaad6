package simulator

import (
	"math"
	"testing"
)

// TestECGHeartRate generates a minute of ECG at 250 Hz for several set
// rates, finds the R peaks and checks the measured rate is within 2 bpm.
func TestECGHeartRate(t *testing.T) {
	type generator interface{ Advance(dt float64) float64 }
	gens := map[string]func(hr float64) generator{
		"model":    func(hr float64) generator { return NewECG(7, hr, 2) },
		"template": func(hr float64) generator { return NewBeatECG(7, hr, 2) },
	}
	for name, newGen := range gens {
		for _, hr := range []float64{50, 72, 110, 150} {
			checkRate(t, name, hr, newGen(hr))
		}
	}
}

func checkRate(t *testing.T, name string, hr float64, e interface{ Advance(float64) float64 }) {
	t.Helper()
	{
		const rate = 250.0
		n := int(60 * rate)
		z := make([]float64, n)
		for i := range z {
			z[i] = e.Advance(1 / rate)
		}
		// R peaks by the QRS upstroke, far steeper than P or T (as in
		// Pan-Tompkins): where the slope passes 40% of its maximum, the
		// highest sample of the next 40 ms, then 250 ms refractory.
		maxSlope := 0.0
		for i := 1; i < n; i++ {
			maxSlope = math.Max(maxSlope, z[i]-z[i-1])
		}
		var peaks []int
		for i := 1; i < n; i++ {
			if z[i]-z[i-1] < 0.4*maxSlope || (len(peaks) > 0 && float64(i-peaks[len(peaks)-1]) < 0.25*rate) {
				continue
			}
			p := i
			for j := i; j < min(n, i+int(0.04*rate)); j++ {
				if z[j] > z[p] {
					p = j
				}
			}
			peaks = append(peaks, p)
			i = p
		}
		if len(peaks) < 10 {
			t.Fatalf("%s: hr %v: %d R peaks in a minute", name, hr, len(peaks))
		}
		meanRR := float64(peaks[len(peaks)-1]-peaks[0]) / float64(len(peaks)-1) / rate
		if got := 60 / meanRR; math.Abs(got-hr) > 2 {
			t.Errorf("%s: set %v bpm, measured %.1f bpm from %d R peaks", name, hr, got, len(peaks))
		} else {
			t.Logf("%s: set %v bpm, measured %.1f bpm", name, hr, got)
		}
	}
}
