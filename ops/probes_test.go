package ops

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestProbes: /livez answers 200 while the process serves, whatever its
// dependencies do; /readyz (and /healthz, its older name) is 503 naming the
// failing dependency, and 200 again once it is back. Kubernetes restarts
// on liveness, so a broker outage must fail only readiness.
func TestProbes(t *testing.T) {
	var down atomic.Bool
	check := Check{"nats", func() error {
		if down.Load() {
			return errors.New("disconnected")
		}
		return nil
	}}
	srv, err := Listen(Options{Addr: "127.0.0.1:0", Gatherer: prometheus.NewRegistry(), Checks: []Check{check}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + srv.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		down bool
		path string
		code int
		body string
	}{
		{false, "/livez", 200, "ok"},
		{false, "/readyz", 200, "ok"},
		{false, "/healthz", 200, "ok"},
		{true, "/livez", 200, "ok"},
		{true, "/readyz", 503, "nats: disconnected"},
		{true, "/healthz", 503, "nats: disconnected"},
		{false, "/readyz", 200, "ok"},
	} {
		down.Store(tc.down)
		code, body := get(tc.path)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("dependency down=%v: GET %s = %d %q, want %d %q", tc.down, tc.path, code, body, tc.code, tc.body)
		}
	}
}
