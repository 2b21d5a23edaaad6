package decrypt

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go"
)

// Decoder opens RAW frames without NATS, through the live workers' own
// code path (header checks, key index, connection cache, key search, v2
// checks), and publishes nothing: replay uses it so that history is read
// exactly as live traffic is. It is safe for concurrent use, but a
// connection's frames should be decoded in order, as workers do.
type Decoder struct{ w *Worker }

// NewDecoder returns a Decoder over the key index ix. Its v2 high-water
// marks live in memory and start empty: a window of history is not refused
// for being older than what live decrypt has seen, while a frame stored
// twice in RAW (a device's resend) is refused the second time, as live.
func NewDecoder(ix *KeyIndex) (*Decoder, error) {
	w, err := newWorker(nil, Options{Index: ix, Partitions: 1})
	if err != nil {
		return nil, err
	}
	w.marks = &memMarks{seen: map[markID]mark{}}
	return &Decoder{w}, nil
}

// Decode turns the RAW message with stream sequence seq into a reading or
// the reason it would go to DEADLETTER.
func (d *Decoder) Decode(ctx context.Context, seq uint64, header nats.Header, data []byte) (Outcome, error) {
	return d.w.decode(ctx, &rawFrame{header: header, data: data, seq: seq, part: -1})
}

// memMarks are v2 high-water marks of one replay, in memory, judged by the
// live workers' rule (mark.accepts).
type memMarks struct {
	mu   sync.Mutex
	seen map[markID]mark
}

func (m *memMarks) accept(_ context.Context, f v2Ref) (verdict, *acceptance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next, v := m.seen[f.id].accepts(f.frameRef)
	if v == fresh {
		next.rev = 1 // "a mark exists": there is no bucket revision here
		m.seen[f.id] = next
	}
	return v, nil, nil
}

func (m *memMarks) stored(*acceptance, uint64, error) {}
