package bus

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// stagedRecorder is a StagedCompletion that records when it is started.
type stagedRecorder struct {
	i       int
	started func(i int) error
	ahead   <-chan struct{} // Wait returns once a later message was started
}

func (s *stagedRecorder) Start(context.Context) error { return s.started(s.i) }

func (s *stagedRecorder) Wait(ctx context.Context) error {
	select {
	case <-s.ahead:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestStagedCompletions: staged completions are started in partition order
// and ahead of earlier messages' outputs (a Wait here returns only once the
// message five places later was started, which would never happen if each
// start waited for the output before it); a failed start sends the message
// back, and it is started and acknowledged again.
func TestStagedCompletions(t *testing.T) {
	_, js := startServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	parts, err := ApplyStreams(ctx, js, StreamOptions{Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	const n, lookahead, failing = 200, 5, 50
	for i := range n {
		if _, err := js.PublishAsync(RawSubject(0), []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()

	var mu sync.Mutex
	startedCh := make([]chan struct{}, n)
	for i := range startedCh {
		startedCh[i] = make(chan struct{})
	}
	var order []int
	failed := false
	started := func(i int) error {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, i)
		select {
		case <-startedCh[i]:
		default:
			close(startedCh[i])
		}
		if i == failing && !failed {
			failed = true
			return errors.New("first step refused")
		}
		return nil
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- ConsumePartitions(runCtx, js, ConsumeOptions{
			Stage: "staged", Stream: StreamRaw, Partitions: parts, Filter: RawSubject, MaxInFlight: 32,
			Handle: func(_ context.Context, m jetstream.Msg) (Completion, error) {
				i, _ := strconv.Atoi(string(m.Data()))
				// From the failing message on, a Wait no longer needs a
				// later start: on an AckAll consumer the messages after
				// a failure are held unacknowledged until it comes back,
				// and the server's window (4 × MaxInFlight) would stop
				// delivering the later message a held Wait waited for.
				ahead := startedCh[min(i+lookahead, n-1)]
				if i >= failing {
					ahead = startedCh[i]
				}
				return &stagedRecorder{i: i, started: started, ahead: ahead}, nil
			},
		})
	}()
	// Wait until every message was started successfully and acknowledged.
	for {
		var info *jetstream.ConsumerInfo
		var c jetstream.Consumer
		if c, err = js.Consumer(ctx, StreamRaw, "staged-0"); errors.Is(err, jetstream.ErrConsumerNotFound) {
			err = nil // not created yet
		} else if err == nil {
			if info, err = c.Info(ctx); err == nil && info.AckFloor.Stream == n && info.NumAckPending == 0 {
				break
			}
		}
		if err != nil {
			break
		}
		if err = ctx.Err(); err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		mu.Lock()
		starts := len(order)
		mu.Unlock()
		t.Fatalf("not every message acknowledged: %v (started %d times)", err, starts)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	// Starts before the failure are in order; the failed message is
	// started once more, after messages that followed it.
	again := 0
	for k, i := range order {
		if i == failing {
			again++
		}
		if k > 0 && i < order[k-1] && i != failing {
			t.Fatalf("message %d started after %d", i, order[k-1])
		}
	}
	if again != 2 {
		t.Fatalf("message %d started %d times, want 2 (refused, then again)", failing, again)
	}
}
