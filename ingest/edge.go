// Package ingest is medpipe's TCP edge: it accepts device connections, cuts
// each legacy stream into frames and stores every frame, still encrypted and
// byte for byte, in the JetStream stream RAW. It never decrypts.
package ingest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// Options configures an Edge. Zero values take the defaults given.
type Options struct {
	// Listen is the address devices connect to (default ":9998").
	Listen string
	// Listener, when set, is used instead of listening on Listen.
	Listener net.Listener
	// Partitions is the RAW partition count in force (see bus.EnsureStreams).
	Partitions int
	// EdgeID prefixes connection ids (default: random per process start,
	// so ids never repeat across edges and restarts).
	EdgeID string
	// MaxConns bounds concurrent connections (default 20000); more are
	// closed on arrival.
	MaxConns int
	// MaxFrame, IdleGap and FrameTimeout bound frames (see wire.FrameReaderOptions).
	MaxFrame     int
	IdleGap      time.Duration
	FrameTimeout time.Duration
	// IdleTimeout closes a connection that sends nothing for this long (default 2 min).
	IdleTimeout time.Duration
	// DrainTimeout bounds the wait for pending publishes at shutdown (default 10 s).
	DrainTimeout time.Duration
	// Log receives connection events; nil uses slog.Default().
	Log *slog.Logger
	// Metrics registers the edge's metrics; nil registers nowhere.
	Metrics prometheus.Registerer
}

func (o *Options) setDefaults() error {
	if o.Listen == "" {
		o.Listen = ":9998"
	}
	if o.Partitions <= 0 {
		return errors.New("ingest: Partitions must be set (see bus.EnsureStreams)")
	}
	if o.EdgeID == "" {
		o.EdgeID = randomID()
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 20000
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 2 * time.Minute
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 10 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return nil
}

func randomID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// Edge is the TCP edge.
type Edge struct {
	js      jetstream.JetStream
	o       Options
	ln      net.Listener
	log     *slog.Logger
	m       *metrics
	pending chan pendingPublish

	connSeq   atomic.Uint64
	active    atomic.Int64
	closing   atomic.Bool
	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	rejectLog rateLimiter
}

// pendingPublish is a frame published to RAW whose ack is awaited.
type pendingPublish struct {
	msg    *nats.Msg
	future jetstream.PubAckFuture
}

// New binds the listener but does not accept yet.
func New(js jetstream.JetStream, o Options) (*Edge, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	ln := o.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", o.Listen); err != nil {
			return nil, fmt.Errorf("ingest: listen on %s: %w", o.Listen, err)
		}
	}
	return &Edge{
		js: js, o: o, ln: ln, log: o.Log,
		m:       newMetrics(o.Metrics),
		pending: make(chan pendingPublish, 8192),
		conns:   map[net.Conn]struct{}{},
	}, nil
}

// Addr is the address devices connect to.
func (e *Edge) Addr() net.Addr { return e.ln.Addr() }

// Health returns nil while the edge listens and NATS is connected.
func (e *Edge) Health() error {
	if e.closing.Load() {
		return errors.New("shutting down")
	}
	if s := e.js.Conn().Status(); s != nats.CONNECTED {
		return fmt.Errorf("nats %s", s)
	}
	return nil
}

// Run accepts and serves connections until ctx is cancelled. Then it stops
// accepting, ends every connection's reads (complete frames are still
// published), waits for every pending publish within DrainTimeout and
// returns.
func (e *Edge) Run(ctx context.Context) error {
	var watchers sync.WaitGroup
	watchers.Go(e.watchAcks)
	var conns sync.WaitGroup
	stop := context.AfterFunc(ctx, func() {
		e.closing.Store(true)
		e.ln.Close()
		e.mu.Lock()
		for c := range e.conns {
			// Readers return; complete frames are still published. CloseRead
			// wins over any deadline the frame reader sets meanwhile.
			_ = c.SetReadDeadline(time.Now())
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.CloseRead()
			}
		}
		e.mu.Unlock()
	})
	defer stop()
	var err error
	for {
		c, aerr := e.ln.Accept()
		if aerr != nil {
			if !e.closing.Load() {
				err = fmt.Errorf("ingest: accept: %w", aerr)
				e.closing.Store(true)
			}
			break
		}
		if e.active.Load() >= int64(e.o.MaxConns) {
			e.m.rejected.Inc()
			if e.rejectLog.allow() {
				e.log.Warn("connection refused: max connections reached", "remote", c.RemoteAddr().String(), "max_conns", e.o.MaxConns)
			}
			c.Close()
			continue
		}
		if !e.track(c) {
			c.Close()
			continue
		}
		conns.Go(func() { e.serve(c) })
	}
	conns.Wait()
	close(e.pending)
	watchers.Wait()
	drain, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.o.DrainTimeout)
	defer cancel()
	select {
	case <-e.js.PublishAsyncComplete():
	case <-drain.Done():
		return errors.Join(err, fmt.Errorf("ingest: %d publishes still pending after %v", e.js.PublishAsyncPending(), e.o.DrainTimeout))
	}
	return err
}

// track registers a connection so shutdown can reach it; false when closing.
func (e *Edge) track(c net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closing.Load() {
		return false
	}
	e.conns[c] = struct{}{}
	e.active.Add(1)
	e.m.active.Inc()
	e.m.conns.Inc()
	return true
}

func (e *Edge) untrack(c net.Conn) {
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
	e.active.Add(-1)
	e.m.active.Dec()
}

// serve reads one connection's frames and publishes them in order.
func (e *Edge) serve(c net.Conn) {
	defer e.untrack(c)
	defer c.Close()
	id := e.o.EdgeID + "-" + strconv.FormatUint(e.connSeq.Add(1), 10)
	remote, local := c.RemoteAddr().String(), c.LocalAddr().String()
	subject := bus.RawSubject(bus.Partition(id, e.o.Partitions))
	fr := wire.NewFrameReader(c, wire.FrameReaderOptions{
		MaxFrame: e.o.MaxFrame, IdleGap: e.o.IdleGap, FrameTimeout: e.o.FrameTimeout, IdleTimeout: e.o.IdleTimeout,
	})
	log := e.log.With("conn", id, "remote", remote)
	log.Debug("device connected")
	for seq := uint64(1); ; seq++ {
		frame, err := fr.Next()
		if err != nil {
			e.closed(log, err, seq-1)
			return
		}
		msg := &nats.Msg{Subject: subject, Data: append([]byte(nil), frame...), Header: nats.Header{}}
		seqText := strconv.FormatUint(seq, 10)
		msg.Header.Set(bus.HeaderConn, id)
		msg.Header.Set(bus.HeaderFrameSeq, seqText)
		msg.Header.Set(bus.HeaderRemote, remote)
		msg.Header.Set(bus.HeaderLocal, local)
		msg.Header.Set(bus.HeaderReceived, time.Now().UTC().Format(time.RFC3339Nano))
		msg.Header.Set(bus.HeaderProtocol, bus.ProtocolLegacy)
		msg.Header.Set(jetstream.MsgIDHeader, id+":"+seqText)
		e.m.frames.Inc()
		e.m.frameBytes.Add(float64(len(frame)))
		// Blocks while too many publishes are pending: a slow JetStream
		// slows this socket's reads instead of growing memory.
		f, err := e.js.PublishMsgAsync(msg)
		if err != nil {
			e.retry(msg, err)
			continue
		}
		e.pending <- pendingPublish{msg, f}
	}
}

// closed logs why a connection ended and counts errors by reason.
func (e *Edge) closed(log *slog.Logger, err error, frames uint64) {
	reason := ""
	switch {
	case errors.Is(err, io.EOF):
		log.Debug("device disconnected", "frames", frames)
		return
	case e.closing.Load():
		log.Debug("connection closed for shutdown", "frames", frames)
		return
	case errors.Is(err, wire.ErrNotHex):
		reason = "not_hex"
	case errors.Is(err, wire.ErrFrameTooLong):
		reason = "too_long"
	case errors.Is(err, wire.ErrIdle):
		reason = "idle"
	case errors.Is(err, wire.ErrTruncated) && errors.Is(err, os.ErrDeadlineExceeded):
		reason = "frame_timeout"
	case errors.Is(err, wire.ErrTruncated):
		reason = "truncated"
	default:
		reason = "read"
	}
	e.m.connErrors.WithLabelValues(reason).Inc()
	log.Info("connection closed", "reason", reason, "err", err, "frames", frames)
}

// watchAcks waits for publish acks in publishing order and retries failures.
func (e *Edge) watchAcks() {
	for p := range e.pending {
		select {
		case <-p.future.Ok():
		case err := <-p.future.Err():
			e.retry(p.msg, err)
		}
	}
}

// retry republishes a frame synchronously with backoff; its message id
// makes a publish that did reach the stream count once.
func (e *Edge) retry(msg *nats.Msg, err error) {
	e.m.publishErrors.Inc()
	for attempt, wait := 1, 100*time.Millisecond; attempt <= 3; attempt, wait = attempt+1, wait*4 {
		time.Sleep(wait)
		e.m.publishRetries.Inc()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = e.js.PublishMsg(ctx, msg)
		cancel()
		if err == nil {
			return
		}
	}
	e.m.framesLost.Inc()
	e.log.Error("frame lost: RAW did not take it", "conn", msg.Header.Get(bus.HeaderConn), "frame", msg.Header.Get(bus.HeaderFrameSeq), "err", err)
}

// rateLimiter allows one event per second, for log lines under abuse.
type rateLimiter struct{ last atomic.Int64 }

func (r *rateLimiter) allow() bool {
	now := time.Now().UnixNano()
	last := r.last.Load()
	return now-last >= int64(time.Second) && r.last.CompareAndSwap(last, now)
}
