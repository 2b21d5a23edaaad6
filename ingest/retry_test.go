package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/testkit"
)

// inProcessJS is a real JetStream context whose first publishes get the
// answer JetStream gives a message id staged by a publish that was never
// stored (what a clustered stream's lost leader leaves behind for the
// whole duplicate window, which cannot be brought about on demand here).
type inProcessJS struct {
	jetstream.JetStream
	async, sync atomic.Int32 // answers left to refuse
}

var errInProcess = &jetstream.APIError{Code: 409, ErrorCode: errCodeMsgIDInProcess, Description: "duplicate message id is in process"}

func (j *inProcessJS) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if j.async.Add(-1) >= 0 {
		return nil, errInProcess
	}
	return j.JetStream.PublishMsgAsync(m, opts...)
}

func (j *inProcessJS) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if j.sync.Add(-1) >= 0 {
		return nil, errInProcess
	}
	return j.JetStream.PublishMsg(ctx, m, opts...)
}

// TestRetryRenamesAnIDInProcess: a frame whose message id JetStream keeps
// answering "in process" is stored under a new id after maxInProcess such
// answers, once, and counted; a frame the stream stores at the next try
// keeps its id.
func TestRetryRenamesAnIDInProcess(t *testing.T) {
	for _, tc := range []struct {
		name      string
		refusals  int32 // "in process" answers in a row, the first one to the asynchronous publish
		wantID    string
		wantNamed float64
	}{
		{"answered once", 1, ":1", 0},
		{"answered until renamed", maxInProcess, ":1" + retryIDMark + "1", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := testkit.StartBus(t, parts)
			js := &inProcessJS{JetStream: b.JS}
			js.async.Store(1)
			js.sync.Store(tc.refusals - 1)
			edge, err := New(js, Options{Listen: "127.0.0.1:0", Partitions: parts, Metrics: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var run sync.WaitGroup
			run.Go(func() { _ = edge.Run(ctx) })
			t.Cleanup(func() { cancel(); run.Wait() })
			c := dial(t, &harness{edge: edge})
			if _, err := c.Write(frame(1)); err != nil {
				t.Fatal(err)
			}
			msgs := rawMessages(t, b.JS, 1)
			h := msgs[0].Headers()
			if got, want := h.Get(jetstream.MsgIDHeader), h.Get(bus.HeaderConn)+tc.wantID; got != want {
				t.Fatalf("stored under message id %q, want %q", got, want)
			}
			if n := testutil.ToFloat64(edge.m.publishRenamed); n != tc.wantNamed {
				t.Fatalf("medpipe_ingest_publish_renamed_total %v, want %v", n, tc.wantNamed)
			}
		})
	}
	if inProcessCount(fmt.Errorf("wrapped: %w", errInProcess), 2) != 3 || inProcessCount(errors.New("nats: timeout"), 2) != 0 {
		t.Fatal("inProcessCount does not tell an id in process from other failures")
	}
}
