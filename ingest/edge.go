// Package ingest is medpipe's TCP edge: it accepts device connections, cuts
// each legacy stream into frames and stores every frame, still encrypted and
// byte for byte, in the JetStream stream RAW. It never decrypts.
package ingest

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
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
	// Listen is the address devices connect to (default DefaultListen).
	Listen string
	// Listener, when set, is used instead of listening on Listen.
	Listener net.Listener
	// TLSConfig, when set, opens a second, TLS port on TLSListen (default
	// DefaultTLSListen) for devices that can do TLS; the plain port stays for those
	// that cannot. Frames and limits are the same on both.
	TLSConfig *tls.Config
	TLSListen string
	// TLSListener, when set with TLSConfig, is used instead of TLSListen.
	TLSListener net.Listener
	// TLSHandshakeTimeout bounds a TLS handshake (default 10 s).
	TLSHandshakeTimeout time.Duration
	// Partitions is the RAW partition count in force (see bus.VerifyStreams).
	Partitions int
	// EdgeID prefixes connection ids (default: random per process start,
	// so ids never repeat across edges and restarts).
	EdgeID string
	// MaxConns bounds concurrent connections (default DefaultMaxConns); more are
	// closed on arrival.
	MaxConns int
	// MaxConnsPerIP bounds concurrent connections from one remote address
	// (default 0: no bound, since devices behind one NAT share an address).
	// An address is an IPv4 address or an IPv6 /64, for every per-address
	// limit; behind a proxy, the one its PROXY header gives (ProxyFrom).
	MaxConnsPerIP int
	// MaxPreFramePerIP bounds the connections from one address that have
	// not yet sent a valid frame (default DefaultMaxPreFramePerIP; negative:
	// no bound). Connections that did send one do not count, so devices
	// behind a NAT keep working next to an attacker's idle sockets.
	MaxPreFramePerIP int
	// AcceptRatePerIP and AcceptBurstPerIP bound new connections per
	// address with a token bucket (defaults DefaultAcceptRatePerIP per
	// second, burst DefaultAcceptBurstPerIP; a negative rate: no bound).
	AcceptRatePerIP  float64
	AcceptBurstPerIP int
	// FirstFrameTimeout cuts a connection that has not sent a valid frame
	// this long after it was accepted (default DefaultFirstFrameTimeout).
	FirstFrameTimeout time.Duration
	// Penalty refuses new connections from an address for this long once
	// it was cut for abuse PenaltyStrikes times within about a Penalty
	// (defaults DefaultPenalty, DefaultPenaltyStrikes; negative: never).
	Penalty        time.Duration
	PenaltyStrikes int
	// ProxyFrom lists the proxies (addresses or prefixes) whose connections
	// start with a PROXY protocol header (v1 or v2), which then gives the
	// device's address for its topics and for the per-address limits. A
	// connection from a listed proxy without a valid header is cut; a header
	// from anyone else is refused as an unknown protocol. Empty: no PROXY
	// protocol.
	ProxyFrom []netip.Prefix
	// MaxFrameRate bounds the frames per second read from one connection
	// (default DefaultMaxFrameRate; negative: no bound). A
	// faster sender is slowed by not being read, not cut off.
	MaxFrameRate float64
	// MaxBadFrames closes a connection once this many of its frames were
	// dead-lettered by decrypt: unknown key, failed authentication, not a
	// reading (default DefaultMaxBadFrames; negative: never).
	MaxBadFrames int
	// MaxFrame bounds a v2 frame in bytes (default wire.DefaultMaxFrame).
	MaxFrame int
	// MaxBlocks bounds a legacy frame in blocks (default
	// wire.DefaultMaxBlocks, the longest reading a device writes); a frame
	// shorter than any reading (wire.MinReadingBlocks) is refused too.
	MaxBlocks int
	// IdleGap ends a legacy frame (see wire.FrameReaderOptions).
	IdleGap time.Duration
	// FrameTimeout bounds the time from a frame's first byte to its last,
	// legacy or v2 (default wire.DefaultFrameTimeout): a slow-loris sender
	// is cut.
	FrameTimeout time.Duration
	// IdleTimeout closes a connection that sends nothing for this long (default DefaultIdleTimeout).
	IdleTimeout time.Duration
	// MaxPendingFrames bounds frames published to RAW and not yet
	// acknowledged, over all connections (default DefaultMaxPendingFrames). Keep it below the
	// JetStream context's own bound (bus.ConnectOptions.MaxPendingPublishes,
	// default 4096): connections wait here, one woken per acknowledgement,
	// whereas nats.go wakes every stalled publisher at once, which with
	// thousands of connections costs more than the publishes themselves.
	MaxPendingFrames int
	// RawBatch is the most frames of a RAW partition stored in one RAW
	// message (bus.ProtocolBatch) when they are ready together
	// (DefaultRawBatch in up). 0 or 1 stores each frame in a message of
	// its own, which a decrypt from before batches reads: raise it once
	// every decrypt process reads batches. A v2 frame of its own carries
	// its message id (bus.V2MsgID), by which RAW stores a device's resend
	// once; batched, a resend is stored again and decrypt's replay marks
	// answer it as accepted before.
	RawBatch int
	// RawLinger spaces a busy partition's RAW messages: a batch that would
	// leave less than this after the partition's previous one waits for
	// more frames until then (or until it is full). A partition that was
	// quiet that long sends its frame at once, so light load gets no delay;
	// under load, messages (and the message ids RAW keeps for its duplicate
	// window) fall from one per ack round trip to at most one per linger.
	// 0 means DefaultRawLinger, a negative value none. Only with RawBatch.
	RawLinger time.Duration
	// DrainTimeout bounds the wait for pending publishes at shutdown (default 10 s).
	DrainTimeout time.Duration
	// Log receives connection events; nil uses slog.Default().
	Log *slog.Logger
	// Metrics registers the edge's metrics; nil registers nowhere.
	Metrics prometheus.Registerer
}

func (o *Options) setDefaults() error {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.Partitions <= 0 {
		return errors.New("ingest: Partitions must be set (see bus.VerifyStreams)")
	}
	if o.EdgeID == "" {
		o.EdgeID = randomID()
	}
	if strings.ContainsAny(o.EdgeID, ".*> \t\r\n") {
		return fmt.Errorf("ingest: edge id %q: it names a NATS subject token (no '.', '*', '>' or spaces)", o.EdgeID)
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.MaxFrame <= 0 {
		o.MaxFrame = wire.DefaultMaxFrame
	}
	if o.MaxBlocks <= 0 {
		o.MaxBlocks = wire.DefaultMaxBlocks
	}
	if o.FrameTimeout <= 0 {
		o.FrameTimeout = wire.DefaultFrameTimeout
	}
	if o.MaxPreFramePerIP == 0 {
		o.MaxPreFramePerIP = DefaultMaxPreFramePerIP
	}
	if o.AcceptRatePerIP == 0 {
		o.AcceptRatePerIP = DefaultAcceptRatePerIP
	}
	if o.AcceptBurstPerIP <= 0 {
		o.AcceptBurstPerIP = max(DefaultAcceptBurstPerIP, int(o.AcceptRatePerIP))
	}
	if o.FirstFrameTimeout <= 0 {
		o.FirstFrameTimeout = DefaultFirstFrameTimeout
	}
	if o.RawLinger == 0 {
		o.RawLinger = DefaultRawLinger
	}
	if o.Penalty == 0 {
		o.Penalty = DefaultPenalty
	}
	if o.PenaltyStrikes <= 0 {
		o.PenaltyStrikes = DefaultPenaltyStrikes
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.TLSListen == "" {
		o.TLSListen = DefaultTLSListen
	}
	if o.TLSHandshakeTimeout <= 0 {
		o.TLSHandshakeTimeout = 10 * time.Second
	}
	if o.MaxFrameRate == 0 {
		o.MaxFrameRate = DefaultMaxFrameRate
	}
	if o.MaxBadFrames == 0 {
		o.MaxBadFrames = DefaultMaxBadFrames
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 10 * time.Second
	}
	if o.MaxPendingFrames <= 0 {
		o.MaxPendingFrames = DefaultMaxPendingFrames
	}
	if o.RawBatch > bus.MaxRawBatchFrames {
		return fmt.Errorf("ingest: raw batch of %d frames: at most %d", o.RawBatch, bus.MaxRawBatchFrames)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	o.FirstFrameTimeout = min(o.FirstFrameTimeout, o.IdleTimeout) // a silent connection is idle too
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
	tlsLn   net.Listener // nil without TLS; raw TCP, the handshake is serve's
	log     *slog.Logger
	m       *metrics
	pending chan pendingPublish
	window  chan struct{} // one slot per single frame awaiting RAW's ack
	// gathers are the RAW partitions' frames gathered for their
	// next message (nil: RawBatch is off); batchedFrames counts the frames
	// of batches awaiting RAW's ack, batchIDPrefix starts their ids.
	gathers       []*rawGather
	batchedFrames atomic.Int64
	batchIDPrefix string

	connSeq     atomic.Uint64
	active      atomic.Int64
	closing     atomic.Bool
	mu          sync.Mutex
	conns       map[net.Conn]struct{}
	addrs       map[string]*addrState // per-address limits, by addrKey
	swept       time.Time             // addrs' last sweep
	byID        map[string]*conn      // open connections by id, for watchDeadLetters
	rejectLog   rateLimiter
	penaltyLog  rateLimiter
	acceptLog   rateLimiter
	throttleLog rateLimiter
	kickLog     rateLimiter
	closeLog    rateLimiter
	retryLog    rateLimiter

	// stopping is closed when shutdown begins, to end throttling waits.
	stopping chan struct{}
	stopOnce sync.Once

	// abandon is cancelled when the drain deadline passes: ack waits and
	// retries stop, and what they still held counts in unconfirmed.
	abandon       context.Context
	abandonCancel context.CancelFunc
	unconfirmed   atomic.Int64
}

// pendingPublish is a frame, or a batch of frames, published to RAW whose
// ack is awaited.
type pendingPublish struct {
	msg    *nats.Msg
	future jetstream.PubAckFuture
	// batch is a batch's partition, whose slot it holds, and frames how
	// many frames it holds (nil and 0: a single frame, holding a window slot).
	batch  *rawGather
	frames int
	// v2 is a v2 frame's connection (nil for legacy), seq the frame's
	// sequence number and n its number in the connection: what settleV2
	// needs to answer the device.
	v2     *conn
	seq, n uint64
	// owed are a batch's v2 frames, told if the batch is lost.
	owed []owedV2
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
	var tlsLn net.Listener
	if o.TLSConfig != nil {
		tlsLn = o.TLSListener
		if tlsLn == nil {
			var err error
			if tlsLn, err = net.Listen("tcp", o.TLSListen); err != nil {
				_ = ln.Close()
				return nil, fmt.Errorf("ingest: TLS listen on %s: %w", o.TLSListen, err)
			}
		}
	}
	abandon, abandonCancel := context.WithCancel(context.Background())
	window := make(chan struct{}, o.MaxPendingFrames)
	e := &Edge{
		js: js, o: o, ln: ln, tlsLn: tlsLn, log: o.Log,
		pending:  make(chan pendingPublish, 8192),
		window:   window,
		conns:    map[net.Conn]struct{}{},
		addrs:    map[string]*addrState{},
		byID:     map[string]*conn{},
		stopping: make(chan struct{}),
		abandon:  abandon, abandonCancel: abandonCancel,
	}
	if o.RawBatch > 1 {
		e.gathers = newRawGathers(o.Partitions)
		e.batchIDPrefix = o.EdgeID + ":" + randomID() + ":b"
	}
	e.m = newMetrics(o.Metrics, func() float64 { return float64(len(window)) + float64(e.batchedFrames.Load()) }, e.penalisedAddrs)
	return e, nil
}

// Addr is the address devices connect to.
func (e *Edge) Addr() net.Addr { return e.ln.Addr() }

// TLSAddr is the address of the TLS port; nil without TLS.
func (e *Edge) TLSAddr() net.Addr {
	if e.tlsLn == nil {
		return nil
	}
	return e.tlsLn.Addr()
}

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
// published) and waits for every pending publish. The whole drain is bounded
// by DrainTimeout: past it, connections are closed outright, acks still
// outstanding are given up on and Run returns an error counting them.
func (e *Edge) Run(ctx context.Context) error {
	var watchers sync.WaitGroup
	watchers.Go(e.watchAcks)
	if nc := e.js.Conn(); nc != nil && e.o.MaxBadFrames > 0 {
		sub, err := e.watchDeadLetters(nc)
		if err != nil {
			return fmt.Errorf("ingest: watch dead letters: %w", err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	if nc := e.js.Conn(); nc != nil {
		sub, err := e.relayReplies(nc)
		if err != nil {
			return fmt.Errorf("ingest: subscribe to v2 replies: %w", err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	var flushers sync.WaitGroup
	for _, g := range e.gathers {
		flushers.Go(func() { e.flushRaw(g) })
	}
	var conns sync.WaitGroup
	stop := context.AfterFunc(ctx, e.beginShutdown)
	defer stop()
	defer e.abandonCancel()
	var loops sync.WaitGroup
	var tlsErr error
	if e.tlsLn != nil {
		loops.Go(func() { tlsErr = e.acceptLoop(ctx, e.tlsLn, true, &conns) })
	}
	err := e.acceptLoop(ctx, e.ln, false, &conns)
	loops.Wait()
	err = errors.Join(err, tlsErr)

	// Drain. The deadline runs from the end of accepting, whether the
	// context or a listener failure ended it.
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.o.DrainTimeout)
	defer cancel()
	forceClose := context.AfterFunc(drainCtx, func() {
		// Readers still busy (a device that keeps sending) or watchers still
		// waiting (JetStream unreachable): stop both.
		e.abandonCancel()
		e.mu.Lock()
		for c := range e.conns {
			_ = c.Close()
		}
		e.mu.Unlock()
	})
	defer forceClose()
	conns.Wait()
	for _, g := range e.gathers {
		g.close()
	}
	flushers.Wait()
	close(e.pending)
	watchers.Wait()
	select {
	case <-e.js.PublishAsyncComplete():
	case <-drainCtx.Done():
	}
	if n := e.unconfirmed.Load(); n > 0 || drainCtx.Err() != nil {
		return errors.Join(err, fmt.Errorf("ingest: drain incomplete after %v: %d frames unconfirmed, %d publishes pending", e.o.DrainTimeout, n, e.js.PublishAsyncPending()))
	}
	return err
}

// beginShutdown stops accepting and makes every connection's reader return
// once it has read what the device sent before.
func (e *Edge) beginShutdown() {
	e.closing.Store(true)
	e.stopOnce.Do(func() { close(e.stopping) })
	_ = e.ln.Close()
	if e.tlsLn != nil {
		_ = e.tlsLn.Close()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for c := range e.conns {
		// CloseRead wins over any deadline the frame reader sets meanwhile;
		// data already received is still read, then the reader sees EOF.
		_ = c.SetReadDeadline(time.Now())
		if tc, ok := c.(*tls.Conn); ok {
			c = tc.NetConn() // records already received are still decrypted and read
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseRead()
		}
	}
}

// acceptLoop accepts connections until shutdown. Transient accept failures
// (out of file descriptors, say) are retried with backoff, as net/http does,
// so that a burst of connections does not end the edge.
func (e *Edge) acceptLoop(ctx context.Context, ln net.Listener, isTLS bool, conns *sync.WaitGroup) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if e.closing.Load() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				e.beginShutdown()
				return fmt.Errorf("ingest: accept on %s: %w", ln.Addr(), err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if e.acceptLog.allow() {
				e.log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		cn, refused := e.track(c, isTLS)
		if refused != "" {
			e.refused(c.RemoteAddr().String(), refused)
		}
		if cn == nil {
			_ = c.Close()
			continue
		}
		conns.Go(func() { e.serve(cn) })
	}
}

// track registers a connection so shutdown and the limits can reach it. It
// returns nil when the edge is closing or a bound refuses the connection,
// with the bound's name. A connection from a proxy (ProxyFrom) is admitted
// against its address's limits only once its PROXY header gives the address.
func (e *Edge) track(c net.Conn, isTLS bool) (*conn, string) {
	remote := c.RemoteAddr().String()
	cn := &conn{Conn: c, raw: c, tls: isTLS, ip: addrKey(remote), remote: remote, local: c.LocalAddr().String()}
	cn.proxied = e.fromProxy(remote)
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.closing.Load():
		return nil, ""
	case len(e.conns) >= e.o.MaxConns:
		return nil, refuseMaxConns
	}
	if !cn.proxied {
		if refused := e.admitLocked(cn, now); refused != "" {
			return nil, refused
		}
	}
	cn.id = e.o.EdgeID + "-" + strconv.FormatUint(e.connSeq.Add(1), 10)
	cn.bucket = newFrameBucket(e.o.MaxFrameRate)
	cn.log = e.log.With("conn", cn.id, "remote", cn.remote)
	e.startFirstFrameTimer(cn)
	e.conns[c] = struct{}{}
	e.byID[cn.id] = cn
	e.active.Add(1)
	e.m.active.Inc()
	e.m.conns.Inc()
	return cn, ""
}

// refused counts and logs (a line a second at most) a connection refused by a bound.
func (e *Edge) refused(remote, bound string) {
	e.m.rejected.WithLabelValues(bound).Inc()
	if e.rejectLog.allow() {
		e.log.Warn("connection refused: "+bound+" reached", "remote", remote, "limit", bound)
	}
}

// fromProxy reports whether a remote address is one of the proxies whose
// connections carry a PROXY header.
func (e *Edge) fromProxy(remote string) bool {
	if len(e.o.ProxyFrom) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range e.o.ProxyFrom {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (e *Edge) untrack(cn *conn) {
	cn.firstFrame.Stop()
	e.mu.Lock()
	delete(e.conns, cn.raw)
	delete(e.byID, cn.id)
	e.releaseLocked(cn)
	e.mu.Unlock()
	e.active.Add(-1)
	e.m.active.Dec()
}

// conn is one device connection's identity and limits.
type conn struct {
	net.Conn                       // what frames are read from: raw, or TLS over it
	raw                   net.Conn // the accepted TCP connection, which closing cuts
	tls, proxied          bool     // accepted on the TLS port; from a ProxyFrom proxy
	id, remote, local, ip string   // ip: the per-address limits' key (addrKey)
	log                   *slog.Logger
	// headers are the RAW headers every frame of the connection carries
	// alike, made at its first frame (after a PROXY header set remote).
	headers *connHeaders
	connLimits
	wmu     sync.Mutex // v2 replies come from the reader (ERRORs), settleV2 and decrypt's relay
	replies []byte     // reply frames queued, under wmu
	queued  int        // how many
}

// writeReply writes one v2 reply frame whole, after any queued ones; it
// reports whether the connection took it.
func (cn *conn) writeReply(b []byte) bool {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	cn.replies = append(cn.replies, b...)
	cn.queued++
	return cn.writeQueued() > 0
}

// queueReply queues a reply frame for the next flushReplies.
func (cn *conn) queueReply(b []byte) {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	cn.replies = append(cn.replies, b...)
	cn.queued++
}

// flushReplies writes the queued reply frames in one write and returns
// how many the connection took.
func (cn *conn) flushReplies() int {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	return cn.writeQueued()
}

func (cn *conn) writeQueued() int {
	n := cn.queued
	if n == 0 {
		return 0
	}
	_ = cn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := cn.Write(cn.replies)
	if cap(cn.replies) > maxReplyBuffer {
		cn.replies = nil
	}
	cn.replies, cn.queued = cn.replies[:0], 0
	if err != nil {
		return 0
	}
	return n
}

// maxReplyBuffer is the largest reply buffer a connection keeps between
// writes; a burst's larger one is let go.
const maxReplyBuffer = 4 << 10

// bufferedConn reads through a buffered reader that may already hold the
// connection's first bytes (read past a PROXY header).
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// serve detects a connection's protocol by its first byte and serves it:
// a hex digit starts a legacy stream, wire.V2Magic a v2 stream.
func (e *Edge) serve(cn *conn) {
	defer e.untrack(cn)
	defer cn.Close()
	cn.log.Debug("device connected")
	br := bufio.NewReaderSize(cn.Conn, 1024)
	// Everything up to the first valid frame is bounded by the first-frame
	// timer; the deadline is a backstop.
	_ = cn.SetReadDeadline(time.Now().Add(e.o.FirstFrameTimeout + time.Second))
	if cn.proxied {
		h, err := readProxyHeader(br)
		if err != nil {
			e.closed(cn, fmt.Errorf("%w: %w", errProxyHeader, err), 0)
			return
		}
		if h.Src.IsValid() {
			cn.remote, cn.local, cn.ip = h.Src.String(), h.Dst.String(), addrKey(h.Src.String())
			cn.log = e.log.With("conn", cn.id, "remote", cn.remote, "proxy", cn.raw.RemoteAddr().String())
		}
		if refused := e.admit(cn); refused != "" {
			e.refused(cn.remote, refused)
			return
		}
	}
	if cn.tls {
		// Bound the handshake, or a silent client would hold a goroutine
		// until the idle timeout.
		tc := tls.Server(&bufferedConn{Conn: cn.raw, r: br}, e.o.TLSConfig)
		hctx, cancel := context.WithTimeout(context.Background(), e.o.TLSHandshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			e.closed(cn, fmt.Errorf("%w: %w", errTLSHandshake, err), 0)
			return
		}
		cn.Conn = tc
		br = bufio.NewReaderSize(tc, 1024)
	}
	first, err := br.Peek(1)
	switch {
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !e.closing.Load():
		e.closed(cn, fmt.Errorf("%w: %w", wire.ErrIdle, err), 0)
	case err != nil:
		e.closed(cn, err, 0)
	case wire.IsHexDigit(first[0]):
		e.serveLegacy(cn, br)
	case first[0] == wire.V2Magic:
		e.serveV2(cn, br)
	case looksLikeProxyHeader(peekBuffered(br)):
		e.closed(cn, fmt.Errorf("%w: a PROXY protocol header from %s, which --proxy-protocol-from does not list", errProxyUntrusted, cn.raw.RemoteAddr()), 0)
	default:
		e.closed(cn, fmt.Errorf("%w: first byte 0x%02x is neither legacy nor v2", errUnknownProtocol, first[0]), 0)
	}
}

// peekBuffered returns the bytes br holds, without reading more.
func peekBuffered(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return b
}

var (
	errUnknownProtocol = errors.New("ingest: unknown protocol")
	errProxyUntrusted  = errors.New("ingest: PROXY header from an address not allowed to send one")
	errTLSHandshake    = errors.New("ingest: TLS handshake failed")
)

// connHeaders are the values of a connection's RAW headers that do not
// change from frame to frame, each made once: nats.Header.Set makes a new
// one-string slice a call, eight a frame on every frame the edge reads.
// The slices are shared by every message of the connection and never
// written to.
type connHeaders struct {
	conn, edge, remote, local, protocol []string
	frames                              prometheus.Counter // medpipe_ingest_frames_total of the protocol
}

// rawHeaderCount is how many headers rawMsg and its callers set: the
// message's map is made that size at once.
const rawHeaderCount = 9

// rawMsg builds the RAW message of one frame.
func (e *Edge) rawMsg(cn *conn, partitionKey, protocol string, seq uint64, frame []byte) *nats.Msg {
	ch := cn.headers
	if ch == nil || ch.protocol[0] != protocol {
		ch = &connHeaders{conn: []string{cn.id}, edge: []string{e.o.EdgeID}, remote: []string{cn.remote}, local: []string{cn.local}, protocol: []string{protocol},
			frames: e.m.frames.WithLabelValues(protocol)}
		cn.headers = ch
	}
	h := make(nats.Header, rawHeaderCount)
	h[bus.HeaderConn] = ch.conn
	h[bus.HeaderEdge] = ch.edge
	h[bus.HeaderFrameSeq] = []string{strconv.FormatUint(seq, 10)}
	h[bus.HeaderRemote] = ch.remote
	h[bus.HeaderLocal] = ch.local
	h[bus.HeaderReceived] = []string{time.Now().UTC().Format(time.RFC3339Nano)}
	h[bus.HeaderProtocol] = ch.protocol
	ch.frames.Inc()
	e.m.frameBytes.Add(float64(len(frame)))
	return &nats.Msg{Subject: bus.RawSubject(bus.Partition(partitionKey, e.o.Partitions)), Data: append([]byte(nil), frame...), Header: h}
}

// serveLegacy reads a legacy stream's frames and publishes them in order.
// RAW partitions legacy frames by connection: the device is not known yet.
func (e *Edge) serveLegacy(cn *conn, br *bufio.Reader) {
	fr := wire.NewFrameReaderFrom(br, cn.Conn, wire.FrameReaderOptions{
		MaxBlocks: e.o.MaxBlocks, MinBlocks: wire.MinReadingBlocks, IdleGap: e.o.IdleGap, FrameTimeout: e.o.FrameTimeout, IdleTimeout: e.o.IdleTimeout,
	})
	var g *rawGather
	if e.gathers != nil {
		g = e.gathers[bus.Partition(cn.id, e.o.Partitions)]
	}
	frames := e.m.frames.WithLabelValues(bus.ProtocolLegacy)
	for seq := uint64(1); ; seq++ {
		frame, err := fr.Next()
		if err != nil {
			e.closed(cn, err, seq-1)
			return
		}
		e.frameValid(cn)
		e.throttle(cn)
		if g != nil {
			if err := e.gather(cn, g, seq, frame, nil); err != nil {
				e.closed(cn, err, seq)
				return
			}
			frames.Inc()
			e.m.frameBytes.Add(float64(len(frame)))
			continue
		}
		msg := e.rawMsg(cn, cn.id, bus.ProtocolLegacy, seq, frame)
		msg.Header.Set(jetstream.MsgIDHeader, cn.id+":"+strconv.FormatUint(seq, 10))
		f, err := e.publish(msg)
		if err != nil {
			if !e.retry(msg, err) && e.abandon.Err() != nil {
				e.unconfirmed.Add(1)
			}
			continue
		}
		e.pending <- pendingPublish{msg: msg, future: f}
	}
}

// serveV2 reads a v2 stream. RAW partitions v2 frames by device, so a
// device's frames stay in order across reconnects. With batches (RawBatch)
// a frame joins its partition's next message; alone, its message id
// (bus.V2MsgID: device, seq and the tag, which only the genuine frame has)
// stores a retransmission once. A stored frame's publish is followed up by
// the edge's one watcher (watchAcks), as legacy frames are: the ACK comes
// from decrypt (relayReplies), and the edge owes the device something only
// when the frame could not be stored (an ERROR) or RAW already held it
// (settleV2).
func (e *Edge) serveV2(cn *conn, br *bufio.Reader) {
	var buf []byte
	v2Frames := e.m.frames.WithLabelValues(bus.ProtocolV2)
	for n := uint64(1); ; n++ {
		frame, err := e.readV2Frame(cn, br, buf)
		if err == nil {
			buf = frame
			var f wire.V2Frame
			if f, err = wire.ParseV2(frame); err == nil && f.Type != wire.V2Data {
				err = fmt.Errorf("%w: a device sends DATA frames only", wire.ErrV2Malformed)
			}
			if err == nil {
				e.frameValid(cn)
				e.throttle(cn)
				if e.gathers != nil {
					if err = e.gather(cn, e.gathers[bus.Partition(f.Device, e.o.Partitions)], n, frame, &f); err != nil {
						e.closed(cn, err, n)
						return
					}
					v2Frames.Inc()
					e.m.frameBytes.Add(float64(len(frame)))
					continue
				}
				msg := e.rawMsg(cn, f.Device, bus.ProtocolV2, n, frame)
				msg.Header.Set(bus.HeaderDevice, f.Device)
				msg.Header.Set(jetstream.MsgIDHeader, bus.V2MsgID(f.Device, f.Seq, f.Tag()))
				fut, perr := e.publish(msg)
				if perr != nil {
					if !e.retry(msg, perr) {
						cn.writeReply(notStored(f.Seq))
					}
					continue // stored by the synchronous retry, or owed an ERROR
				}
				e.pending <- pendingPublish{msg: msg, future: fut, v2: cn, seq: f.Seq, n: n}
				continue
			}
		}
		switch {
		case errors.Is(err, wire.ErrFrameTooLong):
			cn.writeReply(wire.AppendV2Error(nil, 0, wire.V2ErrTooLarge, "frame too large"))
		case errors.Is(err, wire.ErrV2Malformed):
			cn.writeReply(wire.AppendV2Error(nil, 0, wire.V2ErrMalformed, "malformed frame"))
		}
		e.closed(cn, err, n-1)
		return
	}
}

// readV2Frame reads one v2 frame: its first byte within IdleTimeout, the
// rest within FrameTimeout of it, so a slow-loris frame is cut.
func (e *Edge) readV2Frame(cn *conn, br *bufio.Reader, buf []byte) ([]byte, error) {
	_ = cn.SetReadDeadline(time.Now().Add(e.o.IdleTimeout))
	if _, err := br.Peek(1); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("%w: %w", wire.ErrIdle, err)
		}
		return nil, err
	}
	_ = cn.SetReadDeadline(time.Now().Add(e.o.FrameTimeout))
	return wire.ReadV2Frame(br, buf, e.o.MaxFrame)
}

// settleV2 follows up a v2 frame's publish: a frame RAW could not store
// gets an ERROR (the device keeps it and resends), and a frame RAW already
// held (a resend within the duplicate window: the ACK of its first copy
// was lost) is stored again marked HeaderResend, so that decrypt sends the
// verified ACK the device is still owed. A stored frame gets nothing from
// here: its ACK comes from decrypt (relayReplies).
func (e *Edge) settleV2(p pendingPublish) {
	outcome, dup := e.awaitStoredDup(p)
	switch {
	case outcome == stored && dup:
		e.askReack(p)
	case outcome == lost:
		// Written aside: the one watcher must not wait on a device's
		// socket (a write may take up to its deadline), and a lost frame
		// is rare (every retry failed).
		go p.v2.writeReply(notStored(p.seq))
	}
	// unconfirmed: shutdown gave up waiting; say nothing, the device resends.
}

// notStored is the ERROR a v2 device gets for frame seq when RAW could not
// store it: the device keeps the frame and sends it again.
func notStored(seq uint64) []byte {
	return wire.AppendV2Error(nil, seq, wire.V2ErrStore, "frame not stored")
}

// askReack stores a resent v2 frame again, marked HeaderResend, under a
// message id of its own: decrypt finds it accepted before and acknowledges
// it again. It is fire and forget: if it is lost, the device resends.
func (e *Edge) askReack(p pendingPublish) {
	cn := p.v2
	msg := &nats.Msg{Subject: p.msg.Subject, Data: p.msg.Data, Header: nats.Header{}}
	for k, v := range p.msg.Header {
		msg.Header[k] = v
	}
	msg.Header.Set(bus.HeaderResend, "1")
	msg.Header.Set(jetstream.MsgIDHeader, "resend:"+cn.id+":"+strconv.FormatUint(p.n, 10))
	e.m.resends.Inc()
	if _, err := e.js.PublishMsgAsync(msg, bus.Backpressure); err != nil && e.retryLog.allow() {
		e.log.Warn("could not ask decrypt to acknowledge a resent frame again", "conn", cn.id, "err", err)
	}
}

// relayReplies forwards decrypt's v2 replies (ACK, REFUSED, made with the
// device's ACK key, which the edge does not hold) to the connection that
// carried the frame. A reply for a connection gone is dropped: the device
// resends the frame on its next connection and is answered again.
//
// Replies are queued on their connection and written when the
// subscription has nothing more pending (or every relayFlushEvery
// replies): a device whose frames decrypt handles in a burst (a backlog,
// an outbox resent after a reconnect) gets its ACKs in one write instead
// of a write system call each.
func (e *Edge) relayReplies(nc *nats.Conn) (*nats.Subscription, error) {
	var sub *nats.Subscription
	var ready sync.WaitGroup // sub is set before the first callback reads it
	ready.Add(1)
	dirty := map[*conn]struct{}{} // only the subscription's goroutine uses it
	queued := 0
	sub, err := nc.Subscribe(bus.AckSubject(e.o.EdgeID), func(m *nats.Msg) {
		ready.Wait()
		f, err := wire.ParseV2(m.Data)
		if err == nil && (f.Type == wire.V2Ack || f.Type == wire.V2Refused) {
			e.mu.Lock()
			cn := e.byID[m.Header.Get(bus.HeaderConn)]
			e.mu.Unlock()
			if cn == nil {
				e.m.repliesDropped.Inc()
			} else {
				cn.queueReply(m.Data)
				dirty[cn] = struct{}{}
				queued++
			}
		}
		// Pending counts the message in hand until the callback returns.
		if n, _, _ := sub.Pending(); n > 1 && queued < relayFlushEvery {
			return
		}
		for cn := range dirty {
			if n := cn.flushReplies(); n > 0 {
				e.m.repliesRelayed.Add(float64(n))
			}
		}
		clear(dirty)
		queued = 0
	})
	ready.Done()
	return sub, err
}

// relayFlushEvery bounds the replies relayReplies queues before writing
// them, however busy the subscription.
const relayFlushEvery = 256

// closed logs why a connection ended and counts errors by reason.
func (e *Edge) closed(cn *conn, err error, frames uint64) {
	log := cn.log
	reason := ""
	switch {
	case cn.kicked.Load() == kickBadFrames:
		reason, err = "bad_frames", errBadFrames
	case cn.kicked.Load() == kickUnknownDevice:
		reason, err = "unknown_device", errUnknownDevice
	case cn.penalised.Load():
		reason, err = "penalised", errors.New("ingest: a penalised address's connection without a valid frame")
	case cn.state.Load() == stateExpired:
		reason, err = "first_frame_timeout", errFirstFrameTimeout
	case errors.Is(err, io.EOF):
		log.Debug("device disconnected", "frames", frames)
		return
	case e.closing.Load():
		log.Debug("connection closed for shutdown", "frames", frames)
		return
	case errors.Is(err, wire.ErrNotHex):
		reason = "not_hex"
	case errors.Is(err, errUnknownProtocol):
		reason = "unknown_protocol"
	case errors.Is(err, errProxyUntrusted):
		reason = "proxy_untrusted"
	case errors.Is(err, errProxyHeader):
		reason = "proxy_header"
	case errors.Is(err, wire.ErrFrameTooShort):
		reason = "too_short"
	case errors.Is(err, errTLSHandshake):
		reason = "tls_handshake"
	case errors.Is(err, wire.ErrV2Malformed):
		reason = "malformed"
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
	if abusive(reason) {
		e.strike(cn)
	}
	// Under a storm of bad connections, a line a second is enough.
	if reason == "bad_frames" || reason == "unknown_device" {
		if e.kickLog.allow() {
			log.Warn("connection closed: its frames were dead-lettered", "reason", reason, "err", err, "bad_frames", cn.badFrames.Load(), "frames", frames)
		}
	} else if e.closeLog.allow() {
		log.Info("connection closed", "reason", reason, "err", err, "frames", frames)
	}
}

// publish stores a frame in RAW asynchronously once the edge's window has
// room; the slot is freed when awaitStored has the outcome. Blocking here
// while too many frames are pending is how a slow JetStream slows the
// sockets' reads instead of growing memory.
func (e *Edge) publish(msg *nats.Msg) (jetstream.PubAckFuture, error) {
	select {
	case e.window <- struct{}{}:
	case <-e.abandon.Done():
		return nil, fmt.Errorf("ingest: frame not published: %w", e.abandon.Err())
	}
	f, err := e.js.PublishMsgAsync(msg, bus.Backpressure)
	if err != nil {
		<-e.window
	}
	return f, err
}

// watchAcks waits for publish acks in publishing order and retries failures.
// One goroutine serves every connection, legacy and v2: futures resolve in
// roughly publishing order, so waiting on them in order costs little, and
// a frame costs no wake-up of a goroutine of its connection's.
func (e *Edge) watchAcks() {
	for p := range e.pending {
		if p.v2 != nil {
			e.settleV2(p)
			continue
		}
		if e.awaitStored(p) == lost {
			e.owedErrors(p)
		}
	}
}

// publishOutcome is what became of one frame's publish.
type publishOutcome int

const (
	stored      publishOutcome = iota // RAW acknowledged it
	lost                              // every retry failed; counted and logged
	unconfirmed                       // shutdown's drain deadline passed first
)

// awaitStored waits for a publish's ack, retrying on failure.
func (e *Edge) awaitStored(p pendingPublish) publishOutcome {
	o, _ := e.awaitStoredDup(p)
	return o
}

// awaitStoredDup is awaitStored that also reports whether RAW already held
// the message (its id within the duplicate window) when the first publish
// was acknowledged.
func (e *Edge) awaitStoredDup(p pendingPublish) (publishOutcome, bool) {
	defer e.released(p)
	if e.abandon.Err() != nil {
		e.unconfirmed.Add(p.count())
		return unconfirmed, false
	}
	select {
	case ack := <-p.future.Ok():
		e.m.observeStored(p.msg)
		return stored, ack != nil && ack.Duplicate
	case err := <-p.future.Err():
		if e.retry(p.msg, err) {
			e.m.observeStored(p.msg)
			return stored, false
		}
		if e.abandon.Err() != nil {
			e.unconfirmed.Add(p.count())
			return unconfirmed, false
		}
		return lost, false
	case <-e.abandon.Done():
		e.unconfirmed.Add(p.count())
		return unconfirmed, false
	}
}

// count is how many frames a publish holds.
func (p *pendingPublish) count() int64 {
	if p.batch == nil {
		return 1
	}
	return int64(p.frames)
}

// released frees what a publish held: its partition's batch slot, or its
// window slot.
func (e *Edge) released(p pendingPublish) {
	if p.batch == nil {
		<-e.window
		return
	}
	e.batchedFrames.Add(-int64(p.frames))
	<-p.batch.slots
}

// retry republishes a frame synchronously with backoff until RAW stores it
// or shutdown gives up on it; its message id makes a publish that did
// reach the stream count once. JetStream unavailable (a leader election, a
// lost quorum) therefore slows the devices instead of losing frames: while
// a frame is retried, its connection's replies wait, the pending window
// fills and reads stop. It reports whether the frame is stored. A frame
// abandoned at shutdown is not counted lost: whether it was stored is
// unknown, and Run's drain error counts it.
//
// One answer is not waited out: a message id "in process" (a publish
// staged it and was never stored, which after a clustered stream's leader
// is lost lasts the whole duplicate window). After maxInProcess such
// answers in a row the frame is published under a new id: its first copy
// may still land, and decrypt's replay marks acknowledge a v2 frame's
// second copy again without storing it twice; a legacy frame's reading
// may then be delivered twice (at least once), where waiting would have
// held every device of the edge for minutes.
func (e *Edge) retry(msg *nats.Msg, err error) bool {
	e.m.publishErrors.Inc()
	id, inProcess, renamed := msg.Header.Get(jetstream.MsgIDHeader), 0, 0
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		if inProcess = inProcessCount(err, inProcess); inProcess >= maxInProcess {
			renamed++
			inProcess = 0
			msg.Header.Set(jetstream.MsgIDHeader, id+retryIDMark+strconv.Itoa(renamed))
			e.m.publishRenamed.Inc()
		}
		if e.retryLog.allow() {
			e.log.Warn("RAW is not taking frames; retrying (devices are slowed meanwhile)", "conn", msg.Header.Get(bus.HeaderConn), "err", err)
		}
		select {
		case <-time.After(wait):
		case <-e.abandon.Done():
			return false
		}
		e.m.publishRetries.Inc()
		ctx, cancel := context.WithTimeout(e.abandon, 5*time.Second)
		_, err = e.js.PublishMsg(ctx, msg)
		cancel()
		if err == nil {
			return true
		}
	}
}

// errCodeMsgIDInProcess is JetStream's answer to a publish whose message id
// an earlier publish staged but never stored (JSStreamDuplicateMessageConflict).
const errCodeMsgIDInProcess jetstream.ErrorCode = 10158

// maxInProcess is how many "in process" answers in a row retry waits out
// (about 0.7 s of backoff) before it renames the frame's message.
const maxInProcess = 3

// retryIDMark joins a renamed message's original id and its renaming count.
const retryIDMark = ":retry"

// inProcessCount is the run of "in process" answers after err.
func inProcessCount(err error, run int) int {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeMsgIDInProcess {
		return run + 1
	}
	return 0
}

// rateLimiter allows one event per second, for log lines under abuse.
type rateLimiter struct{ last atomic.Int64 }

func (r *rateLimiter) allow() bool {
	now := time.Now().UnixNano()
	last := r.last.Load()
	return now-last >= int64(time.Second) && r.last.CompareAndSwap(last, now)
}
