// Package sink is the contract every output of medpipe implements, in the
// shape of Redpanda Connect's outputs: connect, write a batch of readings
// and get its acknowledgement, close. publish feeds a sink from READINGS
// and acknowledges a READINGS message only once the sink has acknowledged
// its reading; replay feeds one from stored frames.
//
// Implementations: publish.MQTTSink (the dashboards' topic layout) and
// sink/webhook (HTTP POST of JSON batches). Add one by implementing Sink
// and wiring a --sink value in cmd/medpipe (see ARCHITECTURE.md).
package sink

import (
	"context"

	"github.com/medpipe/medpipe/bus"
)

// Ack is a write's acknowledgement.
type Ack interface {
	// Wait returns nil once the destination holds the whole batch, or the
	// error that lost it (the caller then redelivers the batch). It may be
	// called once.
	Wait(ctx context.Context) error
}

// Sink is an output.
type Sink interface {
	// Connect prepares the output. A sink that can retry does so until ctx
	// ends; one that cannot returns the error.
	Connect(ctx context.Context) error
	// WriteBatch hands over readings and returns at once, or once there is
	// room (a sink bounds what it holds unacknowledged). The readings must
	// not be changed afterwards. Acks complete in the order of their writes.
	WriteBatch(ctx context.Context, batch []*bus.Reading) (Ack, error)
	// Close flushes what it holds and releases the output; acks not yet
	// complete then fail.
	Close(ctx context.Context) error
}

// Checker is a Sink that can tell whether its destination is reachable
// (for /readyz).
type Checker interface {
	Health() error
}

// Done is an acknowledgement that is already complete, with err.
func Done(err error) Ack { return done{err} }

type done struct{ err error }

func (d done) Wait(context.Context) error { return d.err }

// Window bounds the acknowledgements a writer waits for: Add waits for the
// oldest once n are outstanding. It is for writers with one stream of
// batches (replay); publish bounds its own per partition.
type Window struct {
	acks chan Ack
}

// NewWindow returns a window of n acknowledgements (at least 1).
func NewWindow(n int) *Window { return &Window{acks: make(chan Ack, max(n, 1))} }

// Add adds an acknowledgement to wait for, first waiting for the oldest
// when the window is full; it returns that one's error.
func (w *Window) Add(ctx context.Context, a Ack) error {
	if len(w.acks) == cap(w.acks) {
		if err := (<-w.acks).Wait(ctx); err != nil {
			return err
		}
	}
	w.acks <- a
	return nil
}

// Drain waits for every outstanding acknowledgement.
func (w *Window) Drain(ctx context.Context) error {
	for len(w.acks) > 0 {
		if err := (<-w.acks).Wait(ctx); err != nil {
			return err
		}
	}
	return nil
}
