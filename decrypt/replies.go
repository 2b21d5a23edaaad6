package decrypt

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// sendReply sends a v2 reply (ACK or REFUSED, made with the device's ACK
// key) to the edge that received the frame, which relays it to the
// connection. It is core NATS, fire and forget: a lost reply costs the
// device a resend, which is acknowledged again.
func (w *Worker) sendReply(to replyTo, reply []byte) {
	if len(reply) == 0 || to.edge == "" || to.conn == "" || w.js == nil || strings.ContainsAny(to.edge, ".*> \t") {
		return
	}
	msg := &nats.Msg{Subject: bus.AckSubject(to.edge), Data: reply, Header: nats.Header{bus.HeaderConn: {to.conn}}}
	if err := w.js.Conn().PublishMsg(msg); err != nil {
		w.m.replyErrors.Inc()
		return
	}
	w.m.replies.Inc()
}

// replyTo is where a frame's v2 reply goes: the edge that received it and
// the connection that carried it.
type replyTo struct{ edge, conn string }

// StuckAfter is how long a device's frames must keep being refused as
// replayed, with none accepted, before the device is reported stuck: a
// device that restarted its sequence (reflashed, replaced, its state lost)
// goes dark otherwise.
const StuckAfter = 5 * time.Second

// stuckForget drops a device from the report once it has sent nothing
// refused for this long.
const stuckForget = time.Minute

// stuckDevices tracks devices whose v2 frames are refused as replayed.
type stuckDevices struct {
	mu      sync.Mutex
	since   map[string]time.Time // first refusal of the current run
	last    map[string]time.Time // latest refusal
	warned  map[string]time.Time // latest WARN per device
	gauge   func(float64)
	nowFunc func() time.Time
}

func newStuckDevices(gauge func(float64)) *stuckDevices {
	return &stuckDevices{since: map[string]time.Time{}, last: map[string]time.Time{}, warned: map[string]time.Time{}, gauge: gauge, nowFunc: time.Now}
}

// refused records a `replayed` refusal and warns (once every 30 s per
// device) once the device has been refused for StuckAfter.
func (s *stuckDevices) refused(device string, log *slog.Logger) {
	now := s.nowFunc()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.since[device]; !ok {
		s.since[device] = now
	}
	s.last[device] = now
	if d := now.Sub(s.since[device]); d >= StuckAfter && now.Sub(s.warned[device]) >= 30*time.Second {
		s.warned[device] = now
		log.Warn("v2 device's frames refused as replayed: its sequence went back (reflashed, replaced, state lost?); reset its mark if the unit is genuine (medpipe keys reset-mark)", "device", device, "for", d.Round(time.Second))
	}
	s.report(now)
}

// accepted clears a device: its frames are taken again.
func (s *stuckDevices) accepted(device string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.since[device]; !ok {
		return
	}
	delete(s.since, device)
	delete(s.last, device)
	delete(s.warned, device)
	s.report(s.nowFunc())
}

// stuck returns the devices refused for StuckAfter and still sending, sorted.
func (s *stuckDevices) stuck() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.report(s.nowFunc())
}

// report forgets devices that went quiet, updates the gauge and returns
// the stuck devices. s.mu is held.
func (s *stuckDevices) report(now time.Time) []string {
	var out []string
	for d, since := range s.since {
		switch {
		case now.Sub(s.last[d]) > stuckForget:
			delete(s.since, d)
			delete(s.last, d)
			delete(s.warned, d)
		case now.Sub(since) >= StuckAfter:
			out = append(out, d)
		}
	}
	slices.Sort(out)
	if s.gauge != nil {
		s.gauge(float64(len(out)))
	}
	return out
}

// pins are the devices pinned to v2: their legacy frames are refused as
// `downgrade`. A device is pinned when decrypt first accepts a v2 frame
// from it, or by an operator (medpipe keys protocol ID v2); the pin is a
// key pin.<device> of the mark bucket, which every worker watches.
type pins struct {
	mu  sync.RWMutex
	set map[string]bool
}

func (p *pins) has(device string) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.set[device]
}

// add records a pin locally and reports whether it is new.
func (p *pins) add(device string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.set[device] {
		return false
	}
	p.set[device] = true
	return true
}

func (p *pins) remove(device string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.set, device)
}

// pin pins a device that spoke v2, in the bucket too the first time this
// worker sees it (in the background: the pin only matters for later frames,
// and the partition must not wait for it).
func (w *Worker) pin(device string) {
	if !w.pins.add(device) || w.o.Seqs == nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := w.o.Seqs.Put(ctx, pinPrefix+device, []byte(bus.ProtocolV2)); err != nil {
			w.pins.remove(device) // the next accepted frame tries again
			w.log.Warn("could not pin a device to v2", "device", device, "err", err)
		}
	}()
}

// watchPins follows the pins in the bucket until ctx ends; ready is called
// once the existing pins are loaded.
func (w *Worker) watchPins(ctx context.Context, ready func()) error {
	return watchKeys(ctx, w.o.Seqs, pinPrefix, ready, func(device string, e jetstream.KeyValueEntry) {
		if e.Operation() == jetstream.KeyValuePut && string(e.Value()) == bus.ProtocolV2 {
			w.pins.add(device)
		} else {
			w.pins.remove(device)
		}
	})
}

// ResetMarks forgets every v2 mark of device (all key generations), for a
// device whose sequence went back (reflashed without its epoch record,
// replaced by a new unit): its next frame starts a new mark. The reset is
// a key reset.<device> of the mark bucket, which every worker watches: the
// partition's owner drops the device's marks at once, and a worker taking
// the partition over later ignores the device's marks in checkpoints, and
// its readings in READINGS, older than the reset.
func ResetMarks(ctx context.Context, kv jetstream.KeyValue, device string) error {
	if !wire.ValidID(device) {
		return fmt.Errorf("decrypt: invalid device id %q", device)
	}
	if _, err := kv.Put(ctx, resetPrefix+device, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("decrypt: reset marks of %s: %w", device, err)
	}
	return nil
}

// SetProtocol pins device to v2 ("v2": its legacy frames are refused as
// downgrade) or unpins it ("auto": pinned again once it speaks v2).
func SetProtocol(ctx context.Context, kv jetstream.KeyValue, device, protocol string) error {
	if !wire.ValidID(device) {
		return fmt.Errorf("decrypt: invalid device id %q", device)
	}
	var err error
	switch protocol {
	case bus.ProtocolV2:
		_, err = kv.Put(ctx, pinPrefix+device, []byte(bus.ProtocolV2))
	case "auto":
		err = kv.Delete(ctx, pinPrefix+device)
	default:
		return fmt.Errorf("decrypt: protocol %q: want v2 or auto", protocol)
	}
	if err != nil {
		return fmt.Errorf("decrypt: set protocol of %s: %w", device, err)
	}
	return nil
}
