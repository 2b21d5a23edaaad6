package bus

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// latencies records what ConsumePartitions observes.
type latencies struct {
	mu  sync.Mutex
	all []float64
}

func (l *latencies) Observe(s float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, s)
}

// sleepCompletion is an output that is durable after a delay.
type sleepCompletion time.Duration

func (s sleepCompletion) Wait(ctx context.Context) error {
	select {
	case <-time.After(time.Duration(s)):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestConsumeLatency checks that every acknowledged message's time in the
// stage, up to its output's ack, is observed once.
func TestConsumeLatency(t *testing.T) {
	ctx, js, parts := startStreams(t, 2, 30*time.Second)
	const n, delay = 20, 30 * time.Millisecond
	for i := range n {
		if _, err := js.Publish(ctx, RawSubject(i%parts), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	var lat latencies
	var handled sync.WaitGroup
	handled.Add(n)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- ConsumePartitions(runCtx, js, ConsumeOptions{
			Stage: "lat", Stream: StreamRaw, Partitions: parts, Filter: RawSubject, Latency: &lat,
			Handle: func(context.Context, jetstream.Msg) (Completion, error) {
				handled.Done()
				return sleepCompletion(delay), nil
			},
		})
	}()
	handled.Wait()
	stop() // in-flight outputs still complete and are acked (the drain)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(lat.all) != n {
		t.Fatalf("%d latencies observed, want %d", len(lat.all), n)
	}
	for _, s := range lat.all {
		if s < delay.Seconds() || s > 20 {
			t.Fatalf("latency %v s: want at least the output's %v and not absurd", s, delay)
		}
	}
}
