package decrypt

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// errReplayed marks a v2 frame at or below its device's high-water mark.
var errReplayed = errors.New("decrypt: sequence number at or below the device's high-water mark")

// handleV2 checks and decrypts a v2 frame: key by device id (no search),
// tag, payload, then the replay check shared by all workers.
func (w *Worker) handleV2(ctx context.Context, f rawFrame, sc *scratch) (bus.Completion, error) {
	fr, err := wire.ParseV2(f.msg.Data())
	if err != nil {
		return w.deadLetter(f, bus.ReasonMalformed, "", err)
	}
	key, revoked, ok := w.ix.LookupV2(fr.Device)
	switch {
	case !ok:
		return w.deadLetter(f, bus.ReasonUnknownDevice, fr.Device, ErrUnknownDevice)
	case revoked:
		return w.deadLetter(f, bus.ReasonRevoked, fr.Device, errors.New("device key revoked"))
	}
	sc.plain, err = key.Open(sc.plain[:0], &fr)
	if err != nil {
		return w.deadLetter(f, bus.ReasonTampered, fr.Device, err)
	}
	p, err := wire.ParseV2Payload(sc.plain)
	if err != nil {
		return w.deadLetter(f, bus.ReasonInvalid, fr.Device, err)
	}
	fresh, err := w.marks.advance(ctx, fr.Device, fr.Seq, f.seq)
	if err != nil {
		return nil, err // the mark store is unreachable: retry the frame later
	}
	if !fresh {
		return w.deadLetter(f, bus.ReasonReplayed, fr.Device, fmt.Errorf("%w (seq %d)", errReplayed, fr.Seq))
	}
	r := p.Values.Reading()
	id := Identified{Device: fr.Device, Reading: r}
	return w.publishReading(f, &id, func(br *bus.Reading) {
		br.Protocol, br.Variant, br.Seq = bus.ProtocolV2, "", fr.Seq
		br.DeviceTime = time.UnixMilli(p.Time).UTC()
		br.Pulse = p.Pulse
	})
}

// mark is a device's high-water mark: the highest sequence number
// accepted and the RAW message that carried it.
type mark struct {
	seq, raw, rev uint64
}

// seqMarks keeps v2 high-water marks in a KV bucket with compare-and-set,
// so that every worker refuses a replay, with a local copy of the marks
// this worker wrote (v2 partitions are pinned per device, so it is
// usually current; a conflict reloads it).
type seqMarks struct {
	kv    jetstream.KeyValue
	mu    sync.Mutex
	local map[string]mark
}

func newSeqMarks(kv jetstream.KeyValue) *seqMarks {
	return &seqMarks{kv: kv, local: map[string]mark{}}
}

// advance reports whether seq is new for device and, if so, records it.
// The same RAW message seen again (a redelivery after a crash) is new.
func (s *seqMarks) advance(ctx context.Context, device string, seq, raw uint64) (bool, error) {
	for attempt := 0; attempt < 5; attempt++ {
		m, err := s.get(ctx, device)
		if err != nil {
			return false, err
		}
		switch {
		case seq == m.seq && raw == m.raw && m.rev != 0:
			return true, nil
		case seq <= m.seq:
			return false, nil
		}
		next := mark{seq: seq, raw: raw}
		value := []byte(strconv.FormatUint(seq, 10) + " " + strconv.FormatUint(raw, 10))
		if m.rev == 0 {
			next.rev, err = s.kv.Create(ctx, device, value)
		} else {
			next.rev, err = s.kv.Update(ctx, device, value, m.rev)
		}
		if err == nil {
			s.mu.Lock()
			s.local[device] = next
			s.mu.Unlock()
			return true, nil
		}
		// Another worker moved the mark: reload and decide again.
		s.mu.Lock()
		delete(s.local, device)
		s.mu.Unlock()
	}
	return false, errors.New("decrypt: high-water mark kept changing under concurrent updates")
}

func (s *seqMarks) get(ctx context.Context, device string) (mark, error) {
	s.mu.Lock()
	m, ok := s.local[device]
	s.mu.Unlock()
	if ok {
		return m, nil
	}
	e, err := s.kv.Get(ctx, device)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return mark{}, nil
	}
	if err != nil {
		return mark{}, fmt.Errorf("decrypt: read high-water mark: %w", err)
	}
	seqText, rawText, _ := strings.Cut(string(e.Value()), " ")
	m.seq, _ = strconv.ParseUint(seqText, 10, 64)
	m.raw, _ = strconv.ParseUint(rawText, 10, 64)
	m.rev = e.Revision()
	return m, nil
}
