package bus

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// fakeMsg is a delivered message whose acks the test reads.
type fakeMsg struct {
	jetstream.Msg // methods the acker does not call panic
	stream, dseq  uint64
	log           *[]string
}

func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.stream, Consumer: m.dseq}}, nil
}
func (m *fakeMsg) Ack() error {
	*m.log = append(*m.log, "ack "+strconv.FormatUint(m.stream, 10))
	return nil
}
func (m *fakeMsg) NakWithDelay(time.Duration) error {
	*m.log = append(*m.log, "nak "+strconv.FormatUint(m.stream, 10))
	return nil
}

// TestAckerNeverCoversWhatItHasNotDone: on an AckAll consumer one ack
// covers every earlier delivery, so the acker must not ack past a failed
// output nor past a delivery it never received (a gap in the delivery
// sequence), until the server counts no more pending than the worker holds.
func TestAckerNeverCoversWhatItHasNotDone(t *testing.T) {
	ctx := context.Background()
	var log []string
	r := &partitionReader{}
	r.ackAll.Store(true)
	live := &inFlightSet{}
	onServer := 0
	a := acker{live: live, r: r, verify: func(context.Context) (int, error) { return onServer, nil }}
	msg := func(stream, dseq uint64) *fakeMsg {
		m := &fakeMsg{stream: stream, dseq: dseq, log: &log}
		live.add(m)
		return m
	}
	expect := func(step string, want ...string) {
		t.Helper()
		if len(log) != len(want) {
			t.Fatalf("%s: acks %v, want %v", step, log, want)
		}
		for i := range want {
			if log[i] != want[i] {
				t.Fatalf("%s: acks %v, want %v", step, log, want)
			}
		}
		log = log[:0]
	}
	unsure := func() { a.lastVerify = time.Time{} } // let the next release ask at once

	// The first message a worker sees may follow deliveries to a worker
	// gone: nothing is acked while the server counts more pending.
	onServer = 3
	m1, m2 := msg(1, 1), msg(2, 2)
	a.done(ctx, m1, false)
	a.done(ctx, m2, true)
	expect("first messages, one more pending on the server")
	onServer = 2
	unsure()
	a.release(ctx, true)
	expect("the server counts what the worker holds", "ack 2")

	// A failed output: nothing after it is acked until it is done.
	m3, m4, m5 := msg(3, 3), msg(4, 4), msg(5, 5)
	a.done(ctx, m3, false)
	a.failed(ctx, m4, true)
	expect("failure", "ack 3", "nak 4")
	a.done(ctx, m5, true)
	expect("done after a failure")
	m4again := msg(4, 6)
	a.done(ctx, m4again, true)
	expect("the failed message done", "ack 5")

	// A redelivery failing behind messages with higher sequences.
	m7, m6 := msg(7, 7), msg(6, 8)
	a.done(ctx, m7, false)
	a.failed(ctx, m6, true)
	expect("redelivery failed behind a later message", "nak 6")
	m6again := msg(6, 9)
	a.done(ctx, m6again, true)
	expect("the redelivery done", "ack 7")

	// A delivery lost on the way (delivery 10 never arrives).
	m9 := msg(9, 11)
	onServer = 2 // delivery 10 and m9
	a.done(ctx, m9, true)
	unsure()
	a.release(ctx, true)
	expect("a gap in the delivery sequence")
	m8 := msg(8, 12) // delivery 10 comes back
	onServer = 2
	a.done(ctx, m8, true)
	unsure()
	a.release(ctx, true)
	expect("the lost delivery came back", "ack 9")
	if n := live.size(); n != 0 {
		t.Fatalf("%d messages still kept alive", n)
	}
}
