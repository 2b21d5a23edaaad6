package device

import (
	"context"
	"sync"
	"time"

	"github.com/medpipe/medpipe/firmware/sensors"
)

// sampler samples the pulse sensor at a fixed rate on its own goroutine
// and keeps the samples until a reading takes them.
type sampler struct {
	adc    sensors.ADC
	clock  func() time.Time
	period time.Duration
	max    int // samples kept while no reading takes them (a frame's worth)

	mu            sync.Mutex
	samples       []float64
	start         time.Time // board clock when samples[0] was taken
	last          float64
	taken, missed uint64
	prev          time.Time // the last tick
}

func newSampler(adc sensors.ADC, clock func() time.Time, period time.Duration, max int) *sampler {
	return &sampler{adc: adc, clock: clock, period: period, max: max, samples: make([]float64, 0, max)}
}

// run samples on every tick until ctx ends; ticks nil: a ticker at the
// sampling period.
func (s *sampler) run(ctx context.Context, ticks <-chan time.Time) {
	if ticks == nil {
		t := time.NewTicker(s.period)
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticks:
			s.sample(now)
		}
	}
}

// sample takes one sample at tick now, counting the ticks missed since the
// previous one (a ticker drops the ticks its reader was too late for).
func (s *sampler) sample(now time.Time) {
	v := sensors.Volts(s.adc.Get())
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.prev.IsZero() {
		if gap := now.Sub(s.prev); gap > s.period*3/2 {
			s.missed += uint64((gap+s.period/2)/s.period) - 1
		}
	}
	s.prev = now
	if len(s.samples) == 0 {
		s.start = s.clock()
	}
	if len(s.samples) < s.max {
		s.samples = append(s.samples, v)
	}
	s.last = v
	s.taken++
}

// take appends the samples since the last take to dst and returns them
// with the board's clock at the first.
func (s *sampler) take(dst []float64) ([]float64, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dst = append(dst, s.samples...)
	s.samples = s.samples[:0]
	return dst, s.start
}

// lastValue is the latest sample (0 before the first).
func (s *sampler) lastValue() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func (s *sampler) counts() (taken, missed uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.taken, s.missed
}
