package ops

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestProbes(t *testing.T) {
	var broken error
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "ops_test_total", Help: "test"})
	reg.MustRegister(c)
	s, err := Listen(Options{Addr: "127.0.0.1:0", Gatherer: reg, Checks: []Check{{"dep", func() error { return broken }}}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(t.Context())
	base := "http://" + s.Addr()
	tests := []struct {
		name, path string
		broken     error
		code       int
		body       string
	}{
		{"ready", "/readyz", nil, 200, "ok"},
		{"healthz is readyz", "/healthz", nil, 200, "ok"},
		{"not ready", "/readyz", errors.New("down"), 503, "dep: down"},
		{"healthz not ready", "/healthz", errors.New("down"), 503, "dep: down"},
		{"alive while not ready", "/livez", errors.New("down"), 200, "ok"},
		{"metrics", "/metrics", nil, 200, "ops_test_total 0"},
		{"no pprof unless asked", "/debug/pprof/", nil, 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			broken = tt.broken
			code, body := get(t, base+tt.path)
			if code != tt.code || !strings.Contains(body, tt.body) {
				t.Fatalf("%s: %d %q, want %d containing %q", tt.path, code, body, tt.code, tt.body)
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
