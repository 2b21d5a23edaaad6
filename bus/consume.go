package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Completion reports when the output produced for a message is durable, so
// that the message's source can be acknowledged. It is the Go shape of
// Redpanda Connect's AckFunc, seen from the source's side.
type Completion interface {
	Wait(ctx context.Context) error
}

// StagedCompletion is a Completion whose output may be started only once a
// first step has succeeded (decrypt stores a v2 device's high-water mark
// before the reading that advanced it). ConsumePartitions calls Start in
// partition order, each once the messages before it were started but
// without waiting for their outputs to be durable, so that the first steps
// and the outputs of consecutive messages overlap instead of each costing
// a round trip in turn. A Start error counts as a failed Wait.
type StagedCompletion interface {
	Completion
	Start(ctx context.Context) error
}

// HandleFunc processes one message in partition order. It returns a
// Completion for its output (nil when there is nothing to wait for), or an
// error when the message could not be processed now; it is then redelivered.
type HandleFunc func(ctx context.Context, msg jetstream.Msg) (Completion, error)

// ConsumeOptions configures ConsumePartitions.
type ConsumeOptions struct {
	// Stage names the durable consumers: <Stage>-<partition>.
	Stage string
	// Stream is the stream to consume.
	Stream string
	// Partitions is the partition count in force (see VerifyStreams).
	Partitions int
	// Filter returns the subject filter of partition p.
	Filter func(p int) string
	// MaxInFlight bounds, per partition, the messages handled but not yet
	// acknowledged (default 512). When it is reached the partition waits.
	MaxInFlight int
	// DrainTimeout bounds how long in-flight work may take to finish after
	// the context is cancelled (default 10 s); unfinished messages are
	// redelivered later, never lost.
	DrainTimeout time.Duration
	// Handle is called for every message, in order within a partition.
	Handle HandleFunc
	// Log receives errors; nil uses slog.Default().
	Log *slog.Logger
	// Latency, when set, observes each acknowledged message's time in the
	// stage, in seconds: from its delivery to the ack of its output.
	Latency Observer
}

// Observer receives durations in seconds (a prometheus.Histogram is one).
type Observer interface{ Observe(seconds float64) }

// ConsumePartitions creates or updates the stage's durable consumer for
// every partition and reads them all until ctx is cancelled, then stops
// pulling, finishes what is in flight and returns. Within a partition,
// messages are handled in stream order and acknowledged in that order once
// their Completion reports success; with several processes, each partition
// is pinned to one of them at a time and moves when its worker goes away.
func ConsumePartitions(ctx context.Context, js jetstream.JetStream, o ConsumeOptions) error {
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 512
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 10 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	consumers := make([]jetstream.Consumer, o.Partitions)
	var otherWindow []int // partitions whose consumer keeps another window than this stage's
	for p := range consumers {
		want := ConsumerConfig(o.Stage, p, o.Filter(p), 4*o.MaxInFlight)
		c, err := bindConsumer(ctx, js, o.Stream, want, o.Log)
		if err != nil {
			return err
		}
		if c.CachedInfo().Config.MaxAckPending != want.MaxAckPending {
			otherWindow = append(otherWindow, p)
		}
		consumers[p] = c
	}
	if len(otherWindow) > 0 {
		// A stage never changes a consumer (an admin does); the stage's own
		// in-flight bound still holds, the server's window is the consumer's.
		o.Log.Info("consumers keep their ack window; this stage's in-flight bound applies within it",
			"stage", o.Stage, "stream", o.Stream, "partitions", len(otherWindow),
			"max_ack_pending", consumers[otherWindow[0]].CachedInfo().Config.MaxAckPending, "wanted", 4*o.MaxInFlight)
	}
	// Work already taken on finishes after ctx is cancelled, within DrainTimeout.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopTimer := context.AfterFunc(ctx, func() { time.AfterFunc(o.DrainTimeout, cancelWork) })
	defer stopTimer()

	var wg sync.WaitGroup
	errs := make(chan error, len(consumers))
	for p, c := range consumers {
		wg.Go(func() {
			if err := consumePartition(ctx, work, js, c, p, o); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return errors.Join(collect(errs)...)
}

// bindConsumer binds the stage's durable consumer as an admin created it
// (see ApplyStreams), so that a stage needs no right to create or change
// consumers. A missing one is created (its first creation); an existing
// one is used as it is.
//
// While JetStream cannot answer (an API request timing out on a busy or
// electing cluster, a 5xx) it tries again for up to bindPatience: a stage
// that exited on the first timeout left its partitions unread. A refusal
// is returned at once.
func bindConsumer(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig, log *slog.Logger) (jetstream.Consumer, error) {
	deadline := time.Now().Add(bindPatience)
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		c, err := bindConsumerOnce(ctx, js, stream, cfg)
		if err == nil || ctx.Err() != nil || !transient(err) || time.Now().After(deadline) {
			return c, err
		}
		log.Warn("consumer not bound yet; retrying", "consumer", cfg.Durable, "stream", stream, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
	}
}

// bindPatience bounds how long bindConsumer retries JetStream's silence;
// a request refused for want of permission also goes unanswered, and must
// end in an error rather than in retries for ever.
const bindPatience = 2 * time.Minute

// transient reports whether a JetStream API error may go away by itself.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code >= 500
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders)
}

func bindConsumerOnce(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := js.Consumer(ctx, stream, cfg.Durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		c, err = js.CreateOrUpdateConsumer(ctx, stream, cfg)
		if err != nil {
			return nil, fmt.Errorf("bus: consumer %s on %s does not exist and could not be created (%w): %w", cfg.Durable, stream, ErrNotAdmin, err)
		}
		return c, nil
	case err != nil:
		return nil, fmt.Errorf("bus: consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	if have := c.CachedInfo().Config; have.FilterSubject != cfg.FilterSubject {
		return nil, fmt.Errorf("%w: consumer %s on %s filters %s, want %s", ErrStreamMismatch, cfg.Durable, stream, have.FilterSubject, cfg.FilterSubject)
	}
	return c, nil
}

func collect(errs <-chan error) []error {
	var out []error
	for err := range errs {
		out = append(out, err)
	}
	return out
}

type inFlight struct {
	msg  jetstream.Msg
	done Completion
	err  error // a StagedCompletion's Start failed

	start time.Time // taken from the reader: the stage latency's start
}

func consumePartition(ctx, work context.Context, js jetstream.JetStream, c jetstream.Consumer, p int, o ConsumeOptions) error {
	r := &partitionReader{js: js, c: c, p: p, o: o}
	it, err := r.open(ctx)
	if err != nil {
		return fmt.Errorf("bus: %s partition %d: %w", o.Stage, p, err)
	}

	// handled → started → acknowledged, each stage in partition order;
	// slots bounds the messages between handling and acknowledgement.
	slots := make(chan struct{}, o.MaxInFlight)
	handled := make(chan inFlight, o.MaxInFlight)
	pending := make(chan inFlight, o.MaxInFlight)
	var live inFlightSet
	var acker sync.WaitGroup
	acker.Go(func() { startInOrder(work, handled, pending) })
	acker.Go(func() { ackInOrder(work, pending, &live, slots, &r.acked, o.Log, o.Latency) })
	acker.Go(func() { live.keepAlive(work, DefaultAckWait/3) })

	// Take messages out of the client's buffer at once, so that every
	// delivered message is tracked and kept alive with in-progress acks;
	// but hold few here: a backlog should wait on the server, where no ack
	// timer runs, not in this process. With MaxInFlight here too, a
	// saturated partition held a thousand messages, and those still in the
	// client's pull buffer behind them outlived AckWait and came back: 9 %
	// of RAW handled twice under 5,000 devices.
	incoming := make(chan jetstream.Msg, readerBuffer(o.MaxInFlight))
	go func() {
		defer close(incoming)
		r.read(ctx, work, it, &live, incoming)
	}()
	stopped := false
	for msg := range incoming {
		start := time.Now()
		slots <- struct{}{}
		var done Completion
		if !stopped {
			done, err = handleInPlace(ctx, work, msg, p, o)
			stopped = err != nil
		}
		if stopped { // the message comes back later; nothing after it is handled before it
			live.remove(msg)
			_ = msg.NakWithDelay(time.Second)
			<-slots
			continue
		}
		handled <- inFlight{msg: msg, done: done, start: start}
	}
	close(handled)
	acker.Wait()
	if ctx.Err() != nil && work.Err() == nil && !stopped {
		unpinIfOurs(js, r.c, r.pinID, o)
	}
	return nil
}

// readerBuffer is how many messages a partition's reader holds, pulled
// but not yet handed to the handler (see consumePartition).
func readerBuffer(maxInFlight int) int { return min(maxInFlight, 32) }

// partitionReader pulls one partition's messages for as long as the stage
// runs, reopening its pull when it ends by itself.
type partitionReader struct {
	js    jetstream.JetStream
	c     jetstream.Consumer
	p     int
	o     ConsumeOptions
	pinID string // this client's pin, written by read until it returns
	// acked is the stream sequence of the last message acknowledged.
	acked atomic.Uint64
}

func (r *partitionReader) open(ctx context.Context) (jetstream.MessagesContext, error) {
	n := readerBuffer(r.o.MaxInFlight)
	it, err := r.c.Messages(
		jetstream.PullPriorityGroup(PriorityGroup),
		// Messages waiting in the client's buffer get no in-progress acks;
		// keep it small so a stalled partition exposes few to redelivery.
		jetstream.PullMaxMessages(n),
		jetstream.PullExpiry(5*time.Second),
	)
	if err != nil {
		return nil, err
	}
	return it, nil
}

// read hands every message of the partition to out until ctx is
// cancelled (then what the client holds is still delivered). A pull that
// ends on its own while the stage runs — the server said its consumer was
// deleted, or answered a pull request with an error the client takes as
// final — is opened again, the consumer recreated if need be: before,
// such a partition's reader just returned and the partition was never read
// again while every other one went on.
func (r *partitionReader) read(ctx, work context.Context, it jetstream.MessagesContext, live *inFlightSet, out chan<- jetstream.Msg) {
	for {
		stop := context.AfterFunc(ctx, it.Drain) // deliver what is buffered, pull no more
		for {
			msg, err := it.Next()
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				break
			}
			if err != nil {
				// Missed heartbeats and the like: the iterator recovers by
				// itself; a final error closes it, and Next says so next.
				r.o.Log.Debug("pull", "stage", r.o.Stage, "partition", r.p, "err", err)
				if work.Err() != nil {
					stop()
					return
				}
				continue
			}
			if id := msg.Headers().Get(pinIDHeader); id != "" {
				r.pinID = id
			}
			live.add(msg)
			out <- msg
		}
		stop()
		if ctx.Err() != nil {
			return
		}
		it = r.reopen(ctx)
		if it == nil {
			return
		}
	}
}

// reopen opens the partition's pull again, retrying until it succeeds or
// ctx ends (nil). A consumer that no longer exists (deleted by hand, say) is
// created again from the message after the last one this reader
// acknowledged, not from the start of the stream, where every stored
// message would be handled again. That position is best effort (a test
// run under load once saw a partition's first messages handled again):
// a message may come twice, none is skipped.
func (r *partitionReader) reopen(ctx context.Context) jetstream.MessagesContext {
	r.o.Log.Warn("partition pull ended; reopening", "stage", r.o.Stage, "partition", r.p)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		info := r.c.CachedInfo()
		cfg := info.Config
		if last := r.acked.Load(); last > 0 { // used only if it must be created
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, last+1
		}
		c, err := bindConsumer(ctx, r.js, info.Stream, cfg, r.o.Log)
		if err == nil {
			r.c = c
			var it jetstream.MessagesContext
			if it, err = r.open(ctx); err == nil {
				return it
			}
		}
		r.o.Log.Warn("partition pull not reopened; retrying", "stage", r.o.Stage, "partition", r.p, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// pinIDHeader carries the pinned client's id on messages of a priority
// group with a pinned client.
const pinIDHeader = HeaderPinID

// unpinIfOurs hands a partition over at once after a clean stop: everything
// this worker took is acknowledged, so another worker may take over now
// rather than when the pin expires (PinnedTTL). A pin that already moved to
// another worker is left alone.
func unpinIfOurs(js jetstream.JetStream, c jetstream.Consumer, pinID string, o ConsumeOptions) {
	if pinID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil {
		return
	}
	for _, g := range info.PriorityGroups {
		if g.Group != PriorityGroup || g.PinnedClientID != pinID {
			continue
		}
		s, err := js.Stream(ctx, o.Stream)
		if err == nil {
			err = s.UnpinConsumer(ctx, info.Name, PriorityGroup)
		}
		if err != nil {
			o.Log.Debug("unpin after stop", "stage", o.Stage, "consumer", info.Name, "err", err)
		}
	}
}

// handleInPlace retries a message the handler could not process (its output
// store unreachable, say) until it succeeds or the stage stops. Retrying in
// place, rather than asking for a redelivery, keeps the partition in order:
// nothing after the message is handled before it. In-progress acks keep it
// from being redelivered meanwhile.
func handleInPlace(ctx, work context.Context, msg jetstream.Msg, p int, o ConsumeOptions) (Completion, error) {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		done, err := o.Handle(work, msg)
		if err == nil {
			return done, nil
		}
		o.Log.Warn("message not processed; retrying", "stage", o.Stage, "partition", p, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
	}
}

// startInOrder starts the outputs of staged completions in the order their
// messages were handled, and passes every message on to be acknowledged.
func startInOrder(ctx context.Context, handled <-chan inFlight, pending chan<- inFlight) {
	defer close(pending)
	for f := range handled {
		if s, ok := f.done.(StagedCompletion); ok {
			f.err = s.Start(ctx)
		}
		pending <- f
	}
}

// ackInOrder acknowledges messages in the order they were handled, each once
// its output is durable, and frees their slots.
func ackInOrder(ctx context.Context, pending <-chan inFlight, live *inFlightSet, slots <-chan struct{}, acked *atomic.Uint64, log *slog.Logger, latency Observer) {
	defer live.close()
	for f := range pending {
		// The message stays alive (in-progress acks) until its output is
		// durable: redelivered while its output is still on the way, it
		// would be handled twice, and a v2 frame handled twice looks like a
		// replay of itself.
		err := f.err
		if err == nil && f.done != nil {
			err = f.done.Wait(ctx)
		}
		live.remove(f.msg)
		if err == nil {
			_ = f.msg.Ack()
			if latency != nil {
				latency.Observe(time.Since(f.start).Seconds())
			}
			if meta, err := f.msg.Metadata(); err == nil {
				acked.Store(meta.Sequence.Stream)
			}
		} else {
			log.Warn("output not confirmed; message will be redelivered", "subject", f.msg.Subject(), "err", err)
			if ctx.Err() == nil {
				_ = f.msg.NakWithDelay(time.Second)
			}
		}
		<-slots
	}
}

// inFlightSet is the messages of a partition handled but not yet acked.
type inFlightSet struct {
	mu     sync.Mutex
	msgs   map[jetstream.Msg]time.Time
	closed chan struct{}
	once   sync.Once
}

func (s *inFlightSet) init() {
	if s.msgs == nil {
		s.msgs = map[jetstream.Msg]time.Time{}
		s.closed = make(chan struct{})
	}
}

func (s *inFlightSet) add(m jetstream.Msg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	s.msgs[m] = time.Now()
}

func (s *inFlightSet) remove(m jetstream.Msg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.msgs, m)
}

func (s *inFlightSet) close() {
	s.mu.Lock()
	s.init()
	s.mu.Unlock()
	s.once.Do(func() { close(s.closed) })
}

// keepAlive tells the server, every interval, that messages held longer
// than interval are still being worked on, so they are not redelivered
// while this worker lives. A dead worker sends nothing and its messages
// come due after AckWait.
func (s *inFlightSet) keepAlive(ctx context.Context, interval time.Duration) {
	s.mu.Lock()
	s.init()
	closed := s.closed
	s.mu.Unlock()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-closed:
			return
		case now := <-t.C:
			s.mu.Lock()
			var old []jetstream.Msg
			for m, since := range s.msgs {
				if now.Sub(since) >= interval {
					old = append(old, m)
				}
			}
			s.mu.Unlock()
			for _, m := range old {
				_ = m.InProgress()
			}
		}
	}
}

// PublishAckTimeout is how long an asynchronous JetStream publish waits for
// its acknowledgement before it counts as failed (and PubAck retries it).
const PublishAckTimeout = 30 * time.Second

// PubAck adapts a JetStream publish future to a Completion. A publish that
// fails (its stream's leader lost mid-flight, say) is published again, with
// the same message id so that one which did reach the stream is stored once,
// until it is stored or ctx ends. Retrying the output, rather than having
// the input redelivered and handled again after the messages that followed
// it, keeps each input handled once: a v2 frame handled twice would look
// like a replay of itself.
func PubAck(js jetstream.JetStream, f jetstream.PubAckFuture) Completion { return pubAck{js, f} }

type pubAck struct {
	js jetstream.JetStream
	f  jetstream.PubAckFuture
}

func (p pubAck) Wait(ctx context.Context) error {
	var err error
	select {
	case <-p.f.Ok():
		return nil
	case err = <-p.f.Err():
	case <-ctx.Done():
		return ctx.Err()
	}
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("publish to %s not confirmed: %w", p.f.Msg().Subject, err)
		case <-time.After(wait):
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = p.js.PublishMsg(pctx, p.f.Msg())
		cancel()
		if err == nil {
			return nil
		}
	}
}
