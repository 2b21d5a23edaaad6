package decrypt

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
)

// stubJetStream stands in for JetStream where a test drives the handler
// alone: it keeps what the handler publishes and acknowledges it at once.
// Any other method panics (nil embedded interface): the handler must not
// need it.
type stubJetStream struct {
	jetstream.JetStream
	published []*nats.Msg
}

func (s *stubJetStream) PublishMsgAsync(m *nats.Msg, _ ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	s.published = append(s.published, m)
	return ackedFuture{m}, nil
}

// ackedFuture is a publish the stub has already acknowledged.
type ackedFuture struct{ m *nats.Msg }

func (a ackedFuture) Ok() <-chan *jetstream.PubAck {
	c := make(chan *jetstream.PubAck, 1)
	c <- &jetstream.PubAck{Stream: "stub"}
	return c
}
func (a ackedFuture) Err() <-chan error { return nil }
func (a ackedFuture) Msg() *nats.Msg    { return a.m }

// stubMsg is a RAW message as ConsumePartitions hands it to the handler.
type stubMsg struct {
	jetstream.Msg
	data   []byte
	header nats.Header
	seq    uint64
}

func (m *stubMsg) Data() []byte         { return m.data }
func (m *stubMsg) Headers() nats.Header { return m.header }

// Subject is the RAW partition ingest would publish to: a v2 frame's
// device's, else 0.
func (m *stubMsg) Subject() string {
	if d := m.header.Get(bus.HeaderDevice); d != "" {
		return bus.RawSubject(bus.Partition(d, parts))
	}
	return bus.RawSubject(0)
}
func (m *stubMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.seq, Consumer: m.seq}}, nil
}

// handleStub runs the worker's handler on one RAW message and returns what
// it published, checking that the publish counts as done.
func handleStub(ctx context.Context, w *Worker, js *stubJetStream, m *stubMsg) (*nats.Msg, error) {
	js.published = js.published[:0]
	done, err := w.handle(ctx, m)
	if err != nil || len(js.published) == 0 {
		return nil, err
	}
	if err := done.Wait(ctx); err != nil {
		return nil, err
	}
	return js.published[len(js.published)-1], nil
}
