package decrypt

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// DefaultReadingsBatch is how many readings of a partition `medpipe up`
// stores in one READINGS message when they are ready together. JetStream
// and both stages spend about the same on a message whatever it holds, so
// under load a batch costs a fraction of one message a reading; a partition
// that has one reading ready sends it at once (no timer, no added delay).
const DefaultReadingsBatch = 64

// maxBatchBytes bounds a READINGS batch's body, well under JetStream's
// default 1 MB message limit: a batch is closed before a reading would
// take it over.
const maxBatchBytes = 512 << 10

// readingsBatch is the readings a partition gathers for one READINGS
// message; done is closed once it is stored (seq) or given up (err).
type readingsBatch struct {
	rs          []bus.KeyedReading
	first, last string // its first and last reading's frame (rawFrame.ref)
	size        int    // its body's bytes, about
	done        chan struct{}
	seq         uint64
	err         error
}

// stored waits until the batch is stored and returns its READINGS sequence.
func (b *readingsBatch) stored(ctx context.Context) (uint64, error) {
	select {
	case <-b.done:
		return b.seq, b.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// batchMember is one reading's share of a batch: a bus.Completion.
type batchMember struct{ b *readingsBatch }

// Wait waits until the reading's batch is stored.
func (m batchMember) Wait(ctx context.Context) error {
	_, err := m.b.stored(ctx)
	return err
}

// gathers reports whether readings of RAW partition part are gathered in
// batches (else each is published as it is made).
func (w *Worker) gathers(part int) bool {
	return part >= 0 && part < len(w.gather) // gather is nil without ReadingsBatch above 1
}

// gatherReading adds a reading to its partition's batch; the batch is sent
// when full, or when the partition's handler is about to wait (flush).
// ConsumePartitions calls handle and flush of one partition from one
// goroutine, so a partition's batch needs no lock.
func (w *Worker) gatherReading(ctx context.Context, f *rawFrame, r *bus.Reading, keyGen string) *readingsBatch {
	part, ref := f.part, f.ref()
	b := w.gather[part]
	if b == nil {
		b = &readingsBatch{first: ref, done: make(chan struct{})}
		w.gather[part] = b
	}
	b.rs = append(b.rs, bus.KeyedReading{Reading: r, KeyGen: keyGen})
	b.last = ref
	b.size += readingSize(r, codeBytes) + len(keyGen) + 2*binaryVarint
	if len(b.rs) >= w.batchMax || b.size >= maxBatchBytes-maxReadingSize {
		w.flush(ctx, part)
	}
	return b
}

// binaryVarint is room for a length prefix.
const binaryVarint = 3

// maxReadingSize bounds a reading's compact body: the wire's bound on
// pulse samples as floats, with its fields and addresses.
const maxReadingSize = 1024 + floatBytes*wire.MaxPulseSamples

// Bytes a pulse sample takes in a reading's body: as its ADC code (a
// batch's 0xB3 body) or as a float (a single reading's 0xB2 body, and a
// 0xB3 body whose samples are not all codes, which regrows once).
const (
	codeBytes  = 2
	floatBytes = 8
)

// readingSize is about the bytes of r's compact body, its pulse samples
// perSample bytes each.
func readingSize(r *bus.Reading, perSample int) int {
	size := 256 // a reading's fields, addresses and times
	if r.Pulse != nil {
		size += perSample * len(r.Pulse.Samples)
	}
	return size
}

// flush stores partition part's gathered readings, if any, in one READINGS
// message; the publish is retried, under the same message id, until stored
// or ctx ends, as a single reading's is.
func (w *Worker) flush(ctx context.Context, part int) {
	if !w.gathers(part) {
		return
	}
	b := w.gather[part]
	if b == nil {
		return
	}
	w.gather[part] = nil
	w.m.batchSize.Observe(float64(len(b.rs)))
	data, err := bus.AppendReadingBatch(make([]byte, 0, b.size+16), b.rs)
	if err != nil { // a reading decrypt made that does not encode: not retried
		b.err = fmt.Errorf("decrypt: encode readings: %w", err)
		close(b.done)
		return
	}
	msg := &nats.Msg{
		Subject: bus.ReadingsBatchSubject(part),
		Data:    data,
		// The id makes the batch of redelivered frames, gathered the same
		// way, a duplicate that JetStream drops.
		Header: nats.Header{jetstream.MsgIDHeader: {"r:" + b.first + "-" + b.last}},
	}
	fut, err := w.js.PublishMsgAsync(msg, bus.Backpressure)
	if err != nil {
		w.m.publishErrors.Inc()
	}
	go func() {
		if err != nil {
			b.seq, b.err = republish(ctx, w.js, msg, err)
		} else {
			b.seq, b.err = storedAt(ctx, w.js, fut)
		}
		close(b.done)
	}()
}
