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
	// Flush, when set, is called with a partition's number whenever its
	// handler is about to wait (no message is ready, or MaxInFlight is
	// reached) and when the partition stops: a handler that gathers
	// outputs (several readings in one message) sends what it holds. A
	// Completion may therefore wait on work Flush starts, never on a later
	// message.
	Flush func(ctx context.Context, p int)
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

	start time.Time // taken from the reader: the stage latency's start
}

func consumePartition(ctx, work context.Context, js jetstream.JetStream, c jetstream.Consumer, p int, o ConsumeOptions) error {
	r := &partitionReader{js: js, c: c, p: p, o: o}
	it, err := r.open(ctx)
	if err != nil {
		return fmt.Errorf("bus: %s partition %d: %w", o.Stage, p, err)
	}

	// handled → acknowledged, in partition order; slots bounds the
	// messages between handling and acknowledgement.
	slots := make(chan struct{}, o.MaxInFlight)
	handled := make(chan inFlight, o.MaxInFlight)
	var live inFlightSet
	var acker sync.WaitGroup
	acker.Go(func() { ackInOrder(work, handled, &live, slots, r, o.Log, o.Latency) })
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
	flush := func() {
		if o.Flush != nil {
			o.Flush(work, p)
		}
	}
	stopped := false
	for {
		var msg jetstream.Msg
		var ok bool
		select {
		case msg, ok = <-incoming:
		default: // about to wait for the next message: send what is gathered
			flush()
			msg, ok = <-incoming
		}
		if !ok {
			break
		}
		start := time.Now()
		select {
		case slots <- struct{}{}:
		default: // the oldest in flight may be waiting for a flush
			flush()
			slots <- struct{}{}
		}
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
	flush()
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
	pinID string     // this client's pin, written by read until it returns
	mu    sync.Mutex // guards c, which reopen replaces
	// lastAcked is the last message acknowledged (its sequence is read
	// only when the consumer must be created again).
	lastAcked atomic.Pointer[jetstream.Msg]
	// ackAll says the consumer acknowledges every message up to the one
	// acked (AckAll): acks go in batches.
	ackAll atomic.Bool
}

func (r *partitionReader) open(ctx context.Context) (jetstream.MessagesContext, error) {
	r.ackAll.Store(r.c.CachedInfo().Config.AckPolicy == jetstream.AckAllPolicy)
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
		if m := r.lastAcked.Load(); m != nil { // used only if it must be created
			if last := streamSeq(*m); last > 0 {
				cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, last+1
			}
		}
		c, err := bindConsumer(ctx, r.js, info.Stream, cfg, r.o.Log)
		if err == nil {
			r.mu.Lock()
			r.c = c
			r.mu.Unlock()
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

// pendingOnServer asks JetStream how many of the partition's messages it
// counts as delivered and not yet acknowledged.
func (r *partitionReader) pendingOnServer(ctx context.Context) (int, error) {
	r.mu.Lock()
	c := r.c
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.NumAckPending, nil
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

// ackBatch is the most messages an AckAll partition leaves handled and
// durable but unacknowledged while more are ready: under load one ack
// covers up to this many, and a crash redelivers at most this many more
// than it would otherwise.
const ackBatch = 64

// ackInOrder acknowledges messages in the order they were handled, each once
// its output is durable, and frees their slots. On an AckAll consumer
// (ConsumerConfig's policy) one ack covers a run of messages: the newest of
// those done when nothing further is ready, or every ackBatch (see acker).
func ackInOrder(ctx context.Context, pending <-chan inFlight, live *inFlightSet, slots <-chan struct{}, r *partitionReader, log *slog.Logger, latency Observer) {
	defer live.close()
	a := acker{live: live, r: r, verify: r.pendingOnServer}
	defer a.release(ctx, true)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var f inFlight
		var ok bool
		select {
		case f, ok = <-pending:
		case <-tick.C: // an idle partition's last messages, a pending check
			a.release(ctx, true)
			continue
		}
		if !ok {
			return
		}
		// The message stays alive (in-progress acks) until its output is
		// durable: redelivered while its output is still on the way, it
		// would be handled twice, and a v2 frame handled twice looks like a
		// replay of itself.
		var err error
		if f.done != nil {
			err = f.done.Wait(ctx)
		}
		if err == nil {
			if latency != nil {
				latency.Observe(time.Since(f.start).Seconds())
			}
			a.done(ctx, f.msg, len(pending) == 0)
		} else {
			log.Warn("output not confirmed; message will be redelivered", "subject", f.msg.Subject(), "err", err)
			a.failed(ctx, f.msg, ctx.Err() == nil)
		}
		<-slots
	}
}

// acker acknowledges one partition's messages, in runs on an AckAll
// consumer. There an ack also acknowledges every earlier message of the
// partition the server counts as delivered, so it must never cover one
// this worker has not done:
//   - a message whose output failed: the messages done after it are held
//     (kept alive) until it came back and is done too. Their outputs were
//     published meanwhile, out of order, as with explicit acks.
//   - a message the server delivered but this worker never received (lost
//     with a connection, or delivered to a worker that died before this
//     one took the partition over). A gap in the delivery sequence, and
//     the first message a worker sees, make the acker unsure: it acks
//     nothing until the server counts no more messages pending than this
//     worker holds, that is until every one delivered has come back to it.
type acker struct {
	live *inFlightSet
	r    *partitionReader
	// verify returns how many messages the server counts as delivered and
	// unacknowledged (pendingOnServer).
	verify func(ctx context.Context) (int, error)
	held   []heldMsg // done, in order, not yet acknowledged (AckAll)
	// fails are stream sequences whose output failed and that are not
	// done since.
	fails map[uint64]struct{}
	// lastDelivery is the consumer's delivery sequence of the last message
	// seen; unsure is set by a gap in it and cleared by verify.
	lastDelivery uint64
	unsure       bool
	lastVerify   time.Time
}

type heldMsg struct {
	msg jetstream.Msg
	seq uint64
}

// see notes a message's delivery and returns its stream sequence.
func (a *acker) see(m jetstream.Msg) uint64 {
	meta, err := m.Metadata()
	if err != nil { // not a consumer's message: no ack could cover it
		return 0
	}
	if d := meta.Sequence.Consumer; a.lastDelivery == 0 || d != a.lastDelivery+1 {
		a.unsure = true
	}
	a.lastDelivery = meta.Sequence.Consumer
	return meta.Sequence.Stream
}

func (a *acker) done(ctx context.Context, m jetstream.Msg, idle bool) {
	if !a.r.ackAll.Load() {
		a.ack(m)
		a.live.remove(m)
		return
	}
	seq := a.see(m)
	delete(a.fails, seq)
	a.held = append(a.held, heldMsg{m, seq})
	if idle || len(a.held) >= ackBatch || len(a.fails) > 0 {
		a.release(ctx, idle)
	}
}

func (a *acker) failed(ctx context.Context, m jetstream.Msg, nak bool) {
	if !a.r.ackAll.Load() {
		a.live.remove(m)
		if nak {
			_ = m.NakWithDelay(time.Second)
		}
		return
	}
	// Recorded before anything is acknowledged: m may be a redelivery,
	// behind messages done with higher sequences.
	if seq := a.see(m); seq > 0 {
		if a.fails == nil {
			a.fails = map[uint64]struct{}{}
		}
		a.fails[seq] = struct{}{}
	}
	a.release(ctx, false)
	a.live.remove(m)
	if nak {
		_ = m.NakWithDelay(time.Second)
	}
}

// release acknowledges, with one ack, the held messages that no failed one
// precedes, once the acker is sure; check allows asking the server.
func (a *acker) release(ctx context.Context, check bool) {
	if len(a.held) == 0 {
		return
	}
	if a.unsure {
		since := time.Since(a.lastVerify)
		if since < 100*time.Millisecond || (!check && since < time.Second) {
			return
		}
		a.lastVerify = time.Now()
		// Counted before asking: a message received after the answer
		// must not make up for one the server counts.
		holds := a.live.size()
		n, err := a.verify(ctx)
		if err != nil || n > holds {
			return
		}
		a.unsure = false
	}
	floor := uint64(1<<64 - 1)
	for seq := range a.fails {
		floor = min(floor, seq)
	}
	var top jetstream.Msg
	var topSeq uint64
	kept := a.held[:0]
	var free []jetstream.Msg
	for _, h := range a.held {
		if h.seq >= floor {
			kept = append(kept, h)
			continue
		}
		free = append(free, h.msg)
		if h.seq > topSeq {
			top, topSeq = h.msg, h.seq
		}
	}
	clear(a.held[len(kept):])
	a.held = kept
	if top != nil {
		a.ack(top)
	}
	a.live.removeAll(free)
}

func (a *acker) ack(m jetstream.Msg) {
	_ = m.Ack()
	a.r.lastAcked.Store(&m)
}

// streamSeq is m's stream sequence, 0 when its metadata cannot be read.
func streamSeq(m jetstream.Msg) uint64 {
	meta, err := m.Metadata()
	if err != nil {
		return 0
	}
	return meta.Sequence.Stream
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

func (s *inFlightSet) size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

func (s *inFlightSet) removeAll(ms []jetstream.Msg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range ms {
		delete(s.msgs, m)
	}
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
