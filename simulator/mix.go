package simulator

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/medpipe/medpipe/wire"
)

// Mix is a fleet's share of each device kind, parsed from
// "pico=40,pseudo=10,v2=50" (weights, not necessarily summing to 100).
type Mix struct {
	kinds   []string
	weights []float64
	total   float64
}

// ParseMix parses a mix of the kinds pico, pseudo and v2.
func ParseMix(s string) (Mix, error) {
	var m Mix
	for _, part := range strings.Split(s, ",") {
		k, w, ok := strings.Cut(strings.TrimSpace(part), "=")
		v, err := strconv.ParseFloat(w, 64)
		if !ok || err != nil || v < 0 || (k != "pico" && k != "pseudo" && k != "v2") {
			return m, fmt.Errorf("simulator: mix %q: want kind=weight pairs of pico, pseudo, v2", part)
		}
		m.kinds, m.weights, m.total = append(m.kinds, k), append(m.weights, v), m.total+v
	}
	if m.total == 0 {
		return m, fmt.Errorf("simulator: mix %q has no weight", s)
	}
	return m, nil
}

// Assign gives device i of n its kind so that every prefix of the fleet
// follows the mix as closely as whole devices allow.
func (m Mix) Assign(d wire.Device, i, n int) Device {
	// The kind whose share is furthest behind after i devices gets device i.
	best, bestGap := 0, -1.0
	counts := make([]float64, len(m.kinds))
	for j := 0; j <= i; j++ {
		best, bestGap = 0, -1e18
		for k := range m.kinds {
			gap := float64(j+1)*m.weights[k]/m.total - counts[k]
			if gap > bestGap {
				best, bestGap = k, gap
			}
		}
		counts[best]++
	}
	switch m.kinds[best] {
	case "v2":
		return Device{Device: d, V2: true}
	case "pseudo":
		return Device{Device: d, Variant: wire.Pseudo}
	}
	return Device{Device: d, Variant: wire.Pico}
}
