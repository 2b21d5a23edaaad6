package stage

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/ops"
	"github.com/medpipe/medpipe/testkit"
)

// TestConsumerLag publishes to RAW with no decrypt running and expects the
// decrypt consumers' lag to add up to what was published.
func TestConsumerLag(t *testing.T) {
	b := testkit.StartBus(t, 2)
	const n = 7
	for i := range n {
		if _, err := b.JS.Publish(context.Background(), bus.RawSubject(i%2), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lag"}, []string{"stream", "consumer"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go pollLag(ctx, g, []lagWatch{{js: b.JS, stream: bus.StreamRaw, stage: bus.StageDecrypt, partitions: 2}}, 20*time.Millisecond, slog.Default())
	testkit.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		p0, p1 := testutil.ToFloat64(g.WithLabelValues("RAW", "decrypt-0")), testutil.ToFloat64(g.WithLabelValues("RAW", "decrypt-1"))
		if p0+p1 != n || p0 == 0 || p1 == 0 {
			return fmt.Errorf("lag %v + %v, want %d in both partitions", p0, p1, n)
		}
		return nil
	})
}

// TestServerCollector reads a real embedded server's figures.
func TestServerCollector(t *testing.T) {
	b := testkit.StartBus(t, 1)
	if _, err := b.JS.Publish(context.Background(), bus.RawSubject(0), []byte("frame")); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewServerCollector(b.Server.Server))
	n, err := testutil.GatherAndCount(reg)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(serverMetrics) {
		t.Errorf("%d metrics, want %d", n, len(serverMetrics))
	}
	want := map[string]func(float64) bool{
		"medpipe_nats_server_connections":                   func(v float64) bool { return v >= 1 },
		"medpipe_nats_server_jetstream_messages":            func(v float64) bool { return v >= 1 },
		"medpipe_nats_server_jetstream_streams":             func(v float64) bool { return v >= 3 },
		"medpipe_nats_server_in_messages_total":             func(v float64) bool { return v >= 1 },
		"medpipe_nats_server_jetstream_storage_bytes":       func(v float64) bool { return v > 0 },
		"medpipe_nats_server_jetstream_storage_limit_bytes": func(v float64) bool { return v > 0 },
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if ok, in := want[mf.GetName()]; in {
			m := mf.GetMetric()[0]
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			if !ok(v) {
				t.Errorf("%s = %v", mf.GetName(), v)
			}
			delete(want, mf.GetName())
		}
	}
	for name := range want {
		t.Errorf("%s missing", name)
	}
}

func TestBuildInfo(t *testing.T) {
	p := New(Options{Build: ops.Build{Version: "1.2.3", Revision: "abc"}})
	err := testutil.GatherAndCompare(p.Metrics(), strings.NewReader(`# HELP medpipe_build_info Always 1; its labels say which build runs.
# TYPE medpipe_build_info gauge
medpipe_build_info{goversion="`+goVersion()+`",revision="abc",version="1.2.3"} 1
`), "medpipe_build_info")
	if err != nil {
		t.Error(err)
	}
}

func goVersion() string { return runtime.Version() }
