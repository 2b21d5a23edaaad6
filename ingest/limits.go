package ingest

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/medpipe/medpipe/bus"
)

// Defaults of the per-address limits (Options). Devices behind one NAT share
// an address, so the limits bear on what an honest device never does: stay
// silent after connecting, reconnect dozens of times a second, or be cut
// for abuse again and again.
const (
	// DefaultMaxPreFramePerIP bounds the connections from one address that
	// have not yet sent a valid frame. A device sends its first frame right
	// after connecting, so even a whole ward reconnecting at once behind one
	// NAT holds few such connections at a time.
	DefaultMaxPreFramePerIP = 32
	// DefaultAcceptRatePerIP and DefaultAcceptBurstPerIP are the token
	// bucket of new connections per address: a burst for a NAT's devices
	// reconnecting together, then a steady rate.
	DefaultAcceptRatePerIP  = 10.0
	DefaultAcceptBurstPerIP = 50
	// DefaultFirstFrameTimeout bounds the time from accepting a connection
	// (PROXY header and TLS handshake included) to its first valid frame.
	DefaultFirstFrameTimeout = 10 * time.Second
	// DefaultPenalty is how long an address cut for abuse
	// DefaultPenaltyStrikes times (within about one DefaultPenalty) is
	// refused new connections.
	DefaultPenalty        = 30 * time.Second
	DefaultPenaltyStrikes = 5
	// minTrackedAddrs is the fewest per-address entries kept before idle
	// ones are dropped early (see sweepLocked).
	minTrackedAddrs = 1 << 16
)

// Refusal reasons, the label of medpipe_ingest_connections_rejected_total.
const (
	refuseMaxConns     = "max_conns"
	refuseMaxConnsIP   = "max_conns_per_ip"
	refusePreFrameIP   = "max_preframe_per_ip"
	refuseAcceptRateIP = "accept_rate"
	refusePenalised    = "penalised"
)

var refusals = []string{refuseMaxConns, refuseMaxConnsIP, refusePreFrameIP, refuseAcceptRateIP, refusePenalised}

// errBadFrames ends a connection whose frames decrypt keeps dead-lettering.
var errBadFrames = errors.New("ingest: too many frames dead-lettered")

// errUnknownDevice ends a connection whose frame no device key opens.
var errUnknownDevice = errors.New("ingest: decrypt found no device key for the connection's frame")

// errFirstFrameTimeout ends a connection without a valid frame in time.
var errFirstFrameTimeout = errors.New("ingest: no valid frame within the first-frame timeout")

// addrKey is the key of the per-address limits: an IPv4 address, or the /64
// of an IPv6 address (one host, or one site's LAN, holds a whole /64, so
// counting single IPv6 addresses would give an attacker 2^64 of them).
func addrKey(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is4() {
		return ip.String()
	}
	p, _ := ip.WithZone("").Prefix(64)
	return p.String()
}

// addrState is what the limits know of one address. Guarded by Edge.mu.
type addrState struct {
	open, preFrame int       // admitted connections, and those without a valid frame yet
	tokens         float64   // accept bucket
	refilled       time.Time // of tokens
	strikes        float64   // abuse cuts, decaying
	struck         time.Time // of strikes' last decay
	penalisedUntil time.Time
}

// refill brings the accept bucket up to now.
func (a *addrState) refill(now time.Time, rate float64, burst int) {
	a.tokens = min(float64(burst), a.tokens+now.Sub(a.refilled).Seconds()*rate)
	a.refilled = now
}

// idle reports whether the entry holds nothing the limits still need: no
// connection, no penalty, no strike and a full bucket.
func (a *addrState) idle(now time.Time, o *Options) bool {
	if a.open > 0 || now.Before(a.penalisedUntil) {
		return false
	}
	if a.strikes > 0 && now.Sub(a.struck) < o.Penalty {
		return false
	}
	return o.AcceptRatePerIP <= 0 || a.tokens+now.Sub(a.refilled).Seconds()*o.AcceptRatePerIP >= float64(o.AcceptBurstPerIP)
}

// addrLocked returns the state of an address, made on first use.
func (e *Edge) addrLocked(key string, now time.Time) *addrState {
	a := e.addrs[key]
	if a == nil {
		e.sweepLocked(now)
		a = &addrState{tokens: float64(e.o.AcceptBurstPerIP), refilled: now, struck: now}
		e.addrs[key] = a
	}
	return a
}

// sweepLocked drops entries that hold nothing, at most once a second. If
// many addresses still hold state (a spread-out attack), idle rate state
// is dropped early: the map stays bounded by the connections open and the
// addresses penalised, which the other limits bound.
func (e *Edge) sweepLocked(now time.Time) {
	if now.Sub(e.swept) < time.Second {
		return
	}
	e.swept = now
	crowded := len(e.addrs) > max(minTrackedAddrs, 2*e.o.MaxConns)
	for k, a := range e.addrs {
		if a.idle(now, &e.o) || (crowded && a.open == 0 && !now.Before(a.penalisedUntil)) {
			delete(e.addrs, k)
		}
	}
}

// admitLocked applies the per-address limits to a new connection whose
// address is known (after the PROXY header, when there is one). It returns
// the refusal reason, or "" and counts the connection against its address.
func (e *Edge) admitLocked(cn *conn, now time.Time) string {
	a := e.addrLocked(cn.ip, now)
	if e.o.AcceptRatePerIP > 0 {
		a.refill(now, e.o.AcceptRatePerIP, e.o.AcceptBurstPerIP)
	}
	switch {
	case now.Before(a.penalisedUntil):
		return refusePenalised
	case e.o.MaxConnsPerIP > 0 && a.open >= e.o.MaxConnsPerIP:
		return refuseMaxConnsIP
	case e.o.MaxPreFramePerIP > 0 && a.preFrame >= e.o.MaxPreFramePerIP:
		return refusePreFrameIP
	case e.o.AcceptRatePerIP > 0 && a.tokens < 1:
		return refuseAcceptRateIP
	}
	a.tokens--
	a.open++
	a.preFrame++
	cn.admitted = true
	return ""
}

// admit is admitLocked for a connection already tracked (one whose address
// came in a PROXY header).
func (e *Edge) admit(cn *conn) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.admitLocked(cn, time.Now())
}

// releaseLocked undoes admitLocked when the connection ends.
func (e *Edge) releaseLocked(cn *conn) {
	if !cn.admitted {
		return
	}
	if a := e.addrs[cn.ip]; a != nil {
		a.open--
		if cn.state.Load() != stateValid {
			a.preFrame--
		}
	}
}

// Connection states for the first-frame timeout.
const (
	statePreFrame int32 = iota // no valid frame yet
	stateValid                 // sent a valid frame: no longer counts as pre-frame
	stateExpired               // cut by the first-frame timeout
)

// startFirstFrameTimer cuts the connection if it has not sent a valid frame
// within FirstFrameTimeout. A timer rather than a read deadline: it bounds
// the PROXY header, the TLS handshake and the first frame together, and the
// frame readers keep their own deadlines.
func (e *Edge) startFirstFrameTimer(cn *conn) {
	cn.firstFrame = time.AfterFunc(e.o.FirstFrameTimeout, func() {
		if cn.state.CompareAndSwap(statePreFrame, stateExpired) {
			_ = cn.raw.Close()
		}
	})
}

// frameValid records that a connection sent a frame that is well formed (a
// legacy frame within a reading's bounds, a v2 DATA frame): it no longer
// counts against its address's pre-frame bound, so devices behind one NAT
// that already talk are never refused because of others that do not.
func (e *Edge) frameValid(cn *conn) {
	if cn.state.Load() == stateValid || !cn.state.CompareAndSwap(statePreFrame, stateValid) {
		return
	}
	cn.firstFrame.Stop()
	e.mu.Lock()
	if a := e.addrs[cn.ip]; a != nil && cn.admitted {
		a.preFrame--
	}
	e.mu.Unlock()
}

// abusive reports whether a connection closed for reason counts as a strike
// against its address: bytes no device sends, or a device's time wasted.
// Idle (a device that went quiet), truncated (one that rebooted inside a
// frame) and read errors are not held against it.
func abusive(reason string) bool {
	switch reason {
	case "not_hex", "unknown_protocol", "proxy_untrusted", "tls_handshake", "malformed",
		"too_long", "too_short", "frame_timeout", "first_frame_timeout", "bad_frames", "unknown_device":
		return true
	}
	return false
}

// strike counts an abuse cut against a connection's address. Strikes decay
// at PenaltyStrikes per Penalty, so an address reaching PenaltyStrikes was
// cut about that often within one Penalty; it is then refused new
// connections for Penalty, and its connections without a valid frame are
// cut. Its connections that already sent valid frames (other devices behind
// the same NAT) go on.
func (e *Edge) strike(cn *conn) {
	if !cn.admitted || e.o.Penalty <= 0 {
		return // a proxy's own connection whose header never came: not its fault
	}
	now := time.Now()
	e.mu.Lock()
	a := e.addrLocked(cn.ip, now)
	decay := now.Sub(a.struck).Seconds() * float64(e.o.PenaltyStrikes) / e.o.Penalty.Seconds()
	a.strikes, a.struck = max(0, a.strikes-decay)+1, now
	penalised := a.strikes >= float64(e.o.PenaltyStrikes)
	var cut []*conn
	if penalised {
		a.strikes, a.penalisedUntil = 0, now.Add(e.o.Penalty)
		for _, other := range e.byID {
			if other.ip == cn.ip && other.admitted && other.state.Load() == statePreFrame {
				cut = append(cut, other)
			}
		}
	}
	e.mu.Unlock()
	if !penalised {
		return
	}
	e.m.penalties.Inc()
	if e.penaltyLog.allow() {
		e.log.Warn("address penalised: cut for abuse too often; new connections refused meanwhile", "addr", cn.ip, "penalty", e.o.Penalty, "strikes", e.o.PenaltyStrikes, "pre_frame_conns_cut", len(cut))
	}
	for _, c := range cut {
		if c.state.CompareAndSwap(statePreFrame, stateExpired) {
			c.penalised.Store(true)
			_ = c.raw.Close()
		}
	}
}

// penalisedAddrs counts the addresses refused for a penalty now.
func (e *Edge) penalisedAddrs() float64 {
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, a := range e.addrs {
		if now.Before(a.penalisedUntil) {
			n++
		}
	}
	return float64(n)
}

// frameBucket is a token bucket bounding one connection's frame rate. It is
// used by the connection's reader only, so it needs no lock.
type frameBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func newFrameBucket(rate float64) *frameBucket {
	if rate <= 0 {
		return nil
	}
	// A second's worth of burst: a device that catches up after a stall is
	// not slowed, a flood is.
	burst := max(rate, 1)
	return &frameBucket{rate: rate, burst: burst, tokens: burst, last: time.Now()}
}

// take spends a token for one frame and returns how long the reader must
// wait first (0 when the connection is within its rate).
func (b *frameBucket) take(now time.Time) time.Duration {
	if b == nil {
		return 0
	}
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// throttle delays the next frame of a connection above MaxFrameRate. Not
// reading is the backpressure: the device's TCP window fills and its sends
// slow down; nothing it sent is dropped.
func (e *Edge) throttle(cn *conn) {
	wait := cn.bucket.take(time.Now())
	if wait <= 0 {
		return
	}
	e.m.throttled.Inc()
	if e.throttleLog.allow() {
		cn.log.Warn("connection throttled: frame rate above the limit", "max_frame_rate", e.o.MaxFrameRate)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-e.stopping:
	}
}

// countsAgainstConnection reports whether a dead-letter reason is the
// sender's fault. A replayed v2 frame is a device resending what was already
// stored (after a reconnect, say): harmless, and not held against it.
func countsAgainstConnection(reason string) bool {
	return reason != "" && reason != string(bus.ReasonReplayed)
}

// cutsAtOnce reports whether one dead letter ends the connection: no key
// opens its first frame, so it is unidentified. Decrypt searched every key
// for it once and dead-letters its later frames without searching again
// (see decrypt's connection cache); cutting it stops them coming at all. A
// later frame that fits no key on an identified connection (a device
// sharing it with a stranger) counts towards MaxBadFrames instead.
func cutsAtOnce(reason, frameSeq string) bool {
	return reason == string(bus.ReasonUnknownDevice) && frameSeq == "1"
}

// Why watchDeadLetters cut a connection.
const (
	kickBadFrames int32 = iota + 1
	kickUnknownDevice
)

// watchDeadLetters closes a connection of this edge once MaxBadFrames of its
// frames were dead-lettered, or at once when no key opens its first: a
// sender whose frames fit no key (or fail authentication) costs decrypt a
// trial of every key, so it is cut off instead of being served for ever. It
// returns the subscription to unsubscribe at shutdown.
func (e *Edge) watchDeadLetters(nc *nats.Conn) (*nats.Subscription, error) {
	prefix := e.o.EdgeID + "-"
	return nc.Subscribe(bus.SubjectDeadLetterPrefix+">", func(m *nats.Msg) {
		id := m.Header.Get(bus.HeaderConn)
		reason := m.Header.Get(bus.HeaderReason)
		if !strings.HasPrefix(id, prefix) || !countsAgainstConnection(reason) {
			return
		}
		e.mu.Lock()
		cn := e.byID[id]
		e.mu.Unlock()
		if cn == nil {
			return
		}
		kick := kickBadFrames
		if cutsAtOnce(reason, m.Header.Get(bus.HeaderFrameSeq)) {
			kick = kickUnknownDevice
		} else if cn.badFrames.Add(1) != int64(e.o.MaxBadFrames) {
			return
		}
		if cn.kicked.CompareAndSwap(0, kick) {
			_ = cn.raw.Close()
		}
	})
}

// connLimits is the per-connection state the limits need.
type connLimits struct {
	bucket     *frameBucket
	badFrames  atomic.Int64
	kicked     atomic.Int32 // closed by watchDeadLetters: a kick* reason
	state      atomic.Int32 // statePreFrame, stateValid or stateExpired
	penalised  atomic.Bool  // cut as a pre-frame connection of a penalised address
	firstFrame *time.Timer
	admitted   bool // counted against its address (admitLocked); guarded by Edge.mu after start
}
