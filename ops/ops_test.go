package ops

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestEndpoints: /metrics serves the registry, and the profiler only when asked.
func TestEndpoints(t *testing.T) {
	reg := NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "ops_test_total", Help: "test"}))
	for _, tt := range []struct {
		name  string
		pprof bool
		path  string
		code  int
		body  string
	}{
		{"metrics", false, "/metrics", 200, "ops_test_total 0"},
		{"runtime metrics", false, "/metrics", 200, "go_goroutines"},
		{"no pprof unless asked", false, "/debug/pprof/", 404, ""},
		{"pprof when asked", true, "/debug/pprof/", 200, "goroutine"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := Listen(Options{Addr: "127.0.0.1:0", Pprof: tt.pprof, Gatherer: reg})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{})
			go func() { srv.Serve(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			resp, err := http.Get("http://" + srv.Addr() + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.code || !strings.Contains(string(b), tt.body) {
				t.Fatalf("GET %s = %d, want %d containing %q", tt.path, resp.StatusCode, tt.code, tt.body)
			}
		})
	}
}

func TestDisabled(t *testing.T) {
	s, err := Listen(Options{})
	if s != nil || err != nil {
		t.Fatalf("empty address: %v, %v", s, err)
	}
	if s.Addr() != "" {
		t.Fatal("disabled server has an address")
	}
	s.Serve(t.Context()) // returns at once
}
