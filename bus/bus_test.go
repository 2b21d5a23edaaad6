package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func startServer(t *testing.T) (*Embedded, jetstream.JetStream) {
	t.Helper()
	e, err := StartEmbedded(EmbeddedOptions{Port: -1, MQTTPort: -1, HTTPPort: -2, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, js, err := Connect(ctx, ConnectOptions{URLs: e.ClientURL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return e, js
}

// startStreams starts a server with medpipe's streams in the given number
// of partitions, and returns a context that ends after timeout (or with
// the test), the client and the partition count.
func startStreams(t *testing.T, partitions int, timeout time.Duration) (context.Context, jetstream.JetStream, int) {
	t.Helper()
	_, js := startServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	parts, err := ApplyStreams(ctx, js, StreamOptions{Partitions: partitions})
	if err != nil {
		t.Fatal(err)
	}
	return ctx, js, parts
}

func TestApplyStreams(t *testing.T) {
	_, js := startServer(t)
	ctx := t.Context()
	n, err := ApplyStreams(ctx, js, StreamOptions{Partitions: 4})
	if err != nil || n != 4 {
		t.Fatalf("create: %d %v", n, err)
	}
	// A stage without an opinion adopts the stream's partition count.
	if n, err := ApplyStreams(ctx, js, StreamOptions{}); err != nil || n != 4 {
		t.Fatalf("adopt: %d %v", n, err)
	}
	// Limits given are applied.
	if _, err := ApplyStreams(ctx, js, StreamOptions{RawMaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	s, _ := js.Stream(ctx, StreamRaw)
	if cfg := s.CachedInfo().Config; cfg.MaxAge != time.Hour || cfg.Compression != jetstream.NoCompression || cfg.Storage != jetstream.FileStorage {
		t.Fatalf("RAW config %+v", cfg)
	}
	// The duplicate window: the default on a new stream, then what is
	// given, kept by a stage without an opinion.
	for _, name := range []string{StreamRaw, StreamReadings, StreamDeadLetter} {
		s, _ := js.Stream(ctx, name)
		if d := s.CachedInfo().Config.Duplicates; d != DefaultDuplicateWindow {
			t.Fatalf("%s created with a duplicate window of %v, want %v", name, d, DefaultDuplicateWindow)
		}
	}
	if _, err := ApplyStreams(ctx, js, StreamOptions{DuplicateWindow: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if _, err := ApplyStreams(ctx, js, StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{StreamRaw, StreamReadings, StreamDeadLetter} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if d := s.CachedInfo().Config.Duplicates; d != 5*time.Second {
			t.Fatalf("%s keeps a duplicate window of %v, want the 5s given", name, d)
		}
	}
	// Compression is a setting of every stream, changed in place; limits
	// not given stay as they are.
	if _, err := ApplyStreams(ctx, js, StreamOptions{Compression: jetstream.S2Compression, CompressionSet: true}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{StreamRaw, StreamReadings, StreamDeadLetter} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if cfg := s.CachedInfo().Config; cfg.Compression != jetstream.S2Compression || (name == StreamRaw) != (cfg.MaxAge == time.Hour) {
			t.Fatalf("%s after asking for S2 (and no limits): %+v", name, cfg)
		}
	}
	// A contradicting partition count is a clear error.
	if _, err := ApplyStreams(ctx, js, StreamOptions{Partitions: 8}); !errors.Is(err, ErrStreamMismatch) {
		t.Fatalf("mismatch: %v", err)
	}
	// So is a stream of the same name with other storage.
	if err := js.DeleteStream(ctx, StreamDeadLetter); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: StreamDeadLetter, Subjects: []string{SubjectDeadLetterPrefix + ">"}, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := ApplyStreams(ctx, js, StreamOptions{}); !errors.Is(err, ErrStreamMismatch) {
		t.Fatalf("storage mismatch: %v", err)
	}
}

// TestNewPartitions: NewPartitions is the count of streams created now;
// existing streams keep theirs whatever a later start says.
func TestNewPartitions(t *testing.T) {
	_, js := startServer(t)
	ctx := t.Context()
	if n, err := ApplyStreams(ctx, js, StreamOptions{NewPartitions: 6}); err != nil || n != 6 {
		t.Fatalf("create: %d partitions, %v; want 6", n, err)
	}
	if n, err := ApplyStreams(ctx, js, StreamOptions{NewPartitions: 9}); err != nil || n != 6 {
		t.Fatalf("restart: %d partitions, %v; want the existing 6", n, err)
	}
}

func TestEmbeddedBusyPort(t *testing.T) {
	e, _ := startServer(t)
	port := e.Server.Addr().(interface{ String() string }).String()
	_, p, _ := splitPort(port)
	_, err := StartEmbedded(EmbeddedOptions{Port: p, MQTTPort: -2, HTTPPort: -2, StoreDir: t.TempDir()})
	var pe *PortError
	if !errors.As(err, &pe) || pe.Listener != "nats" || !errors.Is(err, ErrPortInUse) {
		t.Fatalf("got %v, want a PortError for nats", err)
	}
}

func splitPort(addr string) (string, int, error) {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			p, err := strconv.Atoi(addr[i+1:])
			return addr[:i], p, err
		}
	}
	return "", 0, fmt.Errorf("no port in %q", addr)
}

// TestConsumePartitionsOrder publishes to several partitions and checks that
// every message is handled once, in order per partition, and acked only
// after its completion.
// publishNumbered stores n messages in each RAW partition, numbered 0 to
// n-1 in their data.
func publishNumbered(t *testing.T, js jetstream.JetStream, parts, n int) {
	t.Helper()
	for i := range n {
		for p := range parts {
			if _, err := js.PublishAsync(RawSubject(p), []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	<-js.PublishAsyncComplete()
}

func TestConsumePartitionsOrder(t *testing.T) {
	ctx, js, parts := startStreams(t, 4, 20*time.Second)
	const perPartition = 500
	publishNumbered(t, js, parts, perPartition)

	var mu sync.Mutex
	next := make([]int, parts)
	var bad []string
	total := 0
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- ConsumePartitions(runCtx, js, ConsumeOptions{
			Stage: "test", Stream: StreamRaw, Partitions: parts, Filter: RawSubject, MaxInFlight: 16,
			Handle: func(_ context.Context, m jetstream.Msg) (Completion, error) {
				p, _ := strconv.Atoi(m.Subject()[len(SubjectRawPrefix):])
				i, _ := strconv.Atoi(string(m.Data()))
				mu.Lock()
				defer mu.Unlock()
				if i != next[p] {
					bad = append(bad, fmt.Sprintf("partition %d: got %d, want %d", p, i, next[p]))
				}
				next[p] = i + 1
				total++
				if total == parts*perPartition {
					stop()
				}
				return nil, nil
			},
		})
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("%d out of order, first: %s", len(bad), bad[0])
	}
	if total != parts*perPartition {
		t.Fatalf("handled %d, want %d", total, parts*perPartition)
	}
	// Everything was acked: no pending messages remain.
	deadline := time.Now().Add(5 * time.Second)
	for p := range parts {
		for {
			c, err := js.Consumer(ctx, StreamRaw, "test-"+strconv.Itoa(p))
			if err != nil {
				t.Fatal(err)
			}
			info, err := c.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.NumAckPending == 0 && info.NumPending == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("partition %d: %d unacked, %d pending", p, info.NumAckPending, info.NumPending)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestCleanStopHandsPartitionsOver: when a worker stops cleanly, the
// partitions it held move to the other worker at once, not after the pin
// expires (DefaultPinnedTTL), and nothing is handled twice or lost.
func TestCleanStopHandsPartitionsOver(t *testing.T) {
	ctx, js, parts := startStreams(t, 2, 30*time.Second)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	seen := map[string]string{} // message → worker
	handledBy := func(worker string) HandleFunc {
		return func(_ context.Context, m jetstream.Msg) (Completion, error) {
			mu.Lock()
			defer mu.Unlock()
			if prev, ok := seen[string(m.Data())]; ok {
				t.Errorf("%s handled by %s and %s", m.Data(), prev, worker)
			}
			seen[string(m.Data())] = worker
			return nil, nil
		}
	}
	run := func(ctx context.Context, worker string) chan error {
		done := make(chan error, 1)
		go func() {
			done <- ConsumePartitions(ctx, js, ConsumeOptions{Stage: "handover", Stream: StreamRaw, Partitions: parts, Filter: RawSubject, Handle: handledBy(worker)})
		}()
		return done
	}
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := js.Publish(ctx, RawSubject(i%parts), []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitSeen := func(n int, within time.Duration) time.Duration {
		start := time.Now()
		for {
			mu.Lock()
			got := len(seen)
			mu.Unlock()
			if got >= n {
				return time.Since(start)
			}
			if time.Since(start) > within {
				t.Fatalf("%d of %d messages handled after %v", got, n, within)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	aCtx, stopA := context.WithCancel(ctx)
	aDone := run(aCtx, "a")
	publish(0, 20)
	waitSeen(20, 10*time.Second) // a holds both pins
	bDone := run(ctx, "b")
	time.Sleep(500 * time.Millisecond) // b is waiting with its pulls
	stopA()
	if err := <-aDone; err != nil {
		t.Fatal(err)
	}
	publish(20, 40)
	took := waitSeen(40, DefaultPinnedTTL-time.Second)
	t.Logf("after a clean stop, the other worker took over in %v (pin TTL %v)", took, DefaultPinnedTTL)
	if took > 3*time.Second {
		t.Fatalf("handover took %v: the pins were not released", took)
	}
	for i := 20; i < 40; i++ {
		if w := seen[strconv.Itoa(i)]; w != "b" {
			t.Fatalf("message %d handled by %q after a stopped", i, w)
		}
	}
	cancel()
	<-bDone
}

// TestDeletedConsumerIsRecreated: a partition whose consumer disappears
// (deleted by hand while the stage runs) is read again, nothing skipped;
// before, its reader ended and the partition was never read again while
// the others went on.
func TestDeletedConsumerIsRecreated(t *testing.T) {
	ctx, js, parts := startStreams(t, 2, 30*time.Second)
	var mu sync.Mutex
	seen := map[string]int{}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- ConsumePartitions(runCtx, js, ConsumeOptions{Stage: "del", Stream: StreamRaw, Partitions: parts, Filter: RawSubject,
			Handle: func(_ context.Context, m jetstream.Msg) (Completion, error) {
				mu.Lock()
				defer mu.Unlock()
				seen[string(m.Data())]++
				return nil, nil
			}})
	}()
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := js.Publish(ctx, RawSubject(i%parts), []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitAcked := func(n int) {
		for {
			mu.Lock()
			got := len(seen)
			mu.Unlock()
			acked := true
			for p := range parts {
				c, err := js.Consumer(ctx, StreamRaw, "del-"+strconv.Itoa(p))
				if err == nil {
					info, err := c.Info(ctx)
					acked = acked && err == nil && info.NumAckPending == 0 && info.NumPending == 0
				} else {
					acked = false
				}
			}
			if got >= n && acked {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%d of %d messages handled and acknowledged", got, n)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	publish(0, 20)
	waitAcked(20)
	s, err := js.Stream(ctx, StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteConsumer(ctx, "del-0"); err != nil {
		t.Fatal(err)
	}
	publish(20, 40)
	waitAcked(40)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Recreating from the message after the last acknowledged one is best
	// effort (the reader's position can lag the server's): a message may
	// be handled again, never skipped.
	again := 0
	for i := range 40 {
		switch n := seen[strconv.Itoa(i)]; {
		case n == 0:
			t.Errorf("message %d never handled", i)
		case n > 1:
			again++
		}
	}
	t.Logf("%d of 40 messages handled again after the consumer was recreated", again)
}

// failOnce is a Completion whose output fails the first time.
type failOnce struct{ fail bool }

func (f failOnce) Wait(context.Context) error {
	if f.fail {
		return errors.New("output refused (test)")
	}
	return nil
}

// TestFailedOutputIsNotAckedByALaterOne: on an AckAll consumer an ack
// covers every earlier message, so a message whose output failed must come
// back and be done before anything after it is acknowledged. Were it
// covered by a later message's ack, it would never be handled again.
func TestFailedOutputIsNotAckedByALaterOne(t *testing.T) {
	ctx, js, parts := startStreams(t, 1, 60*time.Second)
	const n, failing = 200, 37
	for i := range n {
		if _, err := js.PublishAsync(RawSubject(0), []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	var mu sync.Mutex
	seen := map[int]int{}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- ConsumePartitions(runCtx, js, ConsumeOptions{Stage: "fail", Stream: StreamRaw, Partitions: parts, Filter: RawSubject, MaxInFlight: 16,
			Handle: func(_ context.Context, m jetstream.Msg) (Completion, error) {
				i, _ := strconv.Atoi(string(m.Data()))
				mu.Lock()
				defer mu.Unlock()
				seen[i]++
				return failOnce{fail: i == failing && seen[i] == 1}, nil
			}})
	}()
	var c jetstream.Consumer
	var err error
	for c == nil { // created by ConsumePartitions
		if c, err = js.Consumer(ctx, StreamRaw, "fail-0"); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p := c.CachedInfo().Config.AckPolicy; p != jetstream.AckAllPolicy {
		t.Fatalf("stage consumer acks %v, want AckAll", p)
	}
	// Progress, not a time bound: each poll must see the failed message
	// come back or the backlog shrink, within ctx's generous deadline.
	for {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		again := seen[failing]
		mu.Unlock()
		if info.NumAckPending == 0 && info.NumPending == 0 && again >= 2 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d unacked, %d pending; the failed message handled %d times", info.NumAckPending, info.NumPending, again)
		case <-time.After(20 * time.Millisecond):
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if seen[i] == 0 {
			t.Errorf("message %d never handled", i)
		}
	}
}

// gathered is the outputs a gathering handler holds for a partition until
// Flush; done is closed by the flush that sends them.
type gathered struct{ done chan struct{} }

func (g *gathered) Wait(ctx context.Context) error {
	select {
	case <-g.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestFlushBeforeWaiting: a handler whose outputs complete only when Flush
// sends them (decrypt's READINGS batches) gets every message acknowledged,
// with a MaxInFlight smaller than what arrives at once: Flush comes before
// the partition waits for a message or for an in-flight slot, and at stop.
func TestFlushBeforeWaiting(t *testing.T) {
	for _, maxInFlight := range []int{1, 3, 64} {
		t.Run(strconv.Itoa(maxInFlight), func(t *testing.T) {
			ctx, js, parts := startStreams(t, 2, 20*time.Second)
			const perPartition = 200
			publishNumbered(t, js, parts, perPartition)
			var mu sync.Mutex
			open := make([]*gathered, parts) // each partition's handler and Flush run on one goroutine
			flushes, handled := 0, 0
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				done <- ConsumePartitions(runCtx, js, ConsumeOptions{
					Stage: "flush", Stream: StreamRaw, Partitions: parts, Filter: RawSubject, MaxInFlight: maxInFlight,
					Handle: func(_ context.Context, m jetstream.Msg) (Completion, error) {
						p, _ := strconv.Atoi(m.Subject()[len(SubjectRawPrefix):])
						if open[p] == nil {
							open[p] = &gathered{done: make(chan struct{})}
						}
						mu.Lock()
						handled++
						mu.Unlock()
						return open[p], nil
					},
					Flush: func(_ context.Context, p int) {
						if open[p] != nil {
							close(open[p].done)
							open[p] = nil
							mu.Lock()
							flushes++
							mu.Unlock()
						}
					},
				})
			}()
			waitAcked := func() error {
				for p := range parts {
					c, err := js.Consumer(ctx, StreamRaw, "flush-"+strconv.Itoa(p))
					if err != nil {
						return err
					}
					info, err := c.Info(ctx)
					if err != nil {
						return err
					}
					if info.NumAckPending != 0 || info.NumPending != 0 {
						return fmt.Errorf("partition %d: %d unacknowledged, %d pending", p, info.NumAckPending, info.NumPending)
					}
				}
				return nil
			}
			var err error
			for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if err = waitAcked(); err == nil {
					break
				}
			}
			stop()
			if rerr := <-done; rerr != nil {
				t.Fatal(rerr)
			}
			if err != nil {
				t.Fatalf("outputs that complete on Flush were not all acknowledged (stuck): %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if handled != parts*perPartition || flushes == 0 || flushes > handled {
				t.Fatalf("handled %d of %d, %d flushes", handled, parts*perPartition, flushes)
			}
			t.Logf("%d messages, %d flushes", handled, flushes)
		})
	}
}
