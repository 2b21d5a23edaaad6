package ingest

import (
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/medpipe/medpipe/bus"
)

// errBadFrames ends a connection whose frames decrypt keeps dead-lettering.
var errBadFrames = errors.New("ingest: too many frames dead-lettered")

// remoteIP is the host part of a connection's remote address, the key of the
// per-address connection bound.
func remoteIP(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
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

// watchDeadLetters closes a connection of this edge once MaxBadFrames of its
// frames were dead-lettered: a sender whose frames fit no key (or fail
// authentication) costs decrypt a trial of every key per frame, so it is cut
// off instead of being served for ever. It returns the subscription to
// unsubscribe at shutdown.
func (e *Edge) watchDeadLetters(nc *nats.Conn) (*nats.Subscription, error) {
	prefix := e.o.EdgeID + "-"
	return nc.Subscribe(bus.SubjectDeadLetterPrefix+">", func(m *nats.Msg) {
		id := m.Header.Get(bus.HeaderConn)
		if !strings.HasPrefix(id, prefix) || !countsAgainstConnection(m.Header.Get(bus.HeaderReason)) {
			return
		}
		e.mu.Lock()
		cn := e.byID[id]
		e.mu.Unlock()
		if cn == nil || cn.badFrames.Add(1) != int64(e.o.MaxBadFrames) {
			return
		}
		cn.kicked.Store(true)
		_ = cn.Close()
	})
}

// connLimits is the per-connection state the limits need.
type connLimits struct {
	bucket    *frameBucket
	badFrames atomic.Int64
	kicked    atomic.Bool // closed by watchDeadLetters
}
