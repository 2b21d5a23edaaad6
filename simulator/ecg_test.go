package simulator

import (
	"math"
	"testing"
)

// TestECGHeartRate generates a minute of ECG at 250 Hz for several set
// rates, finds the R peaks and checks the measured rate is within 2 bpm.
func TestECGHeartRate(t *testing.T) {
	for _, hr := range []float64{50, 72, 110, 150} {
		e := NewECG(7, hr, 2)
		const rate = 250.0
		n := int(60 * rate)
		z := make([]float64, n)
		for i := range z {
			z[i] = e.Advance(1 / rate)
		}
		top := 0.0
		for _, v := range z {
			top = math.Max(top, v)
		}
		var peaks []int
		for i := 1; i < n-1; i++ {
			if z[i] > top/2 && z[i] >= z[i-1] && z[i] > z[i+1] && (len(peaks) == 0 || float64(i-peaks[len(peaks)-1]) > 0.25*rate) {
				peaks = append(peaks, i)
			}
		}
		if len(peaks) < 10 {
			t.Fatalf("hr %v: %d R peaks in a minute", hr, len(peaks))
		}
		meanRR := float64(peaks[len(peaks)-1]-peaks[0]) / float64(len(peaks)-1) / rate
		if got := 60 / meanRR; math.Abs(got-hr) > 2 {
			t.Errorf("set %v bpm, measured %.1f bpm from %d R peaks", hr, got, len(peaks))
		} else {
			t.Logf("set %v bpm, measured %.1f bpm", hr, got)
		}
	}
}
