// Package ops is a process's admin endpoint: Prometheus metrics, health
// probes and, on request, Go's profiler, on one HTTP listener.
//
//	/metrics         Prometheus text format
//	/livez           200 while the process serves HTTP at all (restart it otherwise)
//	/readyz          200 when every dependency check passes, 503 with the failures otherwise
//	/healthz         the same as /readyz (kept for probes written before /readyz)
//	/debug/pprof/    with Options.Pprof only: the endpoint must then stay private
package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check reports whether one dependency of the process works (nil: it does).
type Check struct {
	Name  string
	Check func() error
}

// NewRegistry returns a Prometheus registry with Go runtime and process metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// With Options.Pprof: a blocking event of d nanoseconds is recorded with
// probability d/profileBlockRate (always from that on), and one mutex
// contention event in profileMutexFraction.
const (
	profileBlockRate     = 100_000 // 100 µs
	profileMutexFraction = 100
)

// Options configures Listen.
type Options struct {
	// Addr is the listen address; empty disables the endpoint.
	Addr string
	// Pprof also serves Go's profiler under /debug/pprof/, and turns on
	// the block and mutex profiles (sampled: see profileBlockRate).
	Pprof bool
	// Gatherer is what /metrics serves.
	Gatherer prometheus.Gatherer
	// Checks decide /readyz (and /healthz).
	Checks []Check
	// Log receives serving errors; nil uses slog.Default().
	Log *slog.Logger
}

// Server is a bound admin endpoint. A nil *Server is a disabled one: its
// methods do nothing.
type Server struct {
	srv *http.Server
	ln  net.Listener
	log *slog.Logger
}

// Listen binds the endpoint. It returns nil, nil when o.Addr is empty.
func Listen(o Options) (*Server, error) {
	if o.Addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("ops: metrics/health listener on %s: %w", o.Addr, err)
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	return &Server{srv: &http.Server{Handler: Handler(o), ReadHeaderTimeout: 5 * time.Second}, ln: ln, log: log}, nil
}

// Handler is the endpoint's HTTP handler (without a listener).
func Handler(o Options) http.Handler {
	mux := http.NewServeMux()
	g := o.Gatherer
	if g == nil {
		g = prometheus.NewRegistry()
	}
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	if o.Pprof {
		// Without a rate the block and mutex profiles stay empty; sampled
		// so that a profiled process runs at nearly its normal cost.
		runtime.SetBlockProfileRate(profileBlockRate)
		runtime.SetMutexProfileFraction(profileMutexFraction)
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
	}
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	ready := func(w http.ResponseWriter, _ *http.Request) {
		var failed []string
		for _, c := range o.Checks {
			if err := c.Check(); err != nil {
				failed = append(failed, c.Name+": "+err.Error())
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(failed) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(failed, "\n"))
			return
		}
		fmt.Fprintln(w, "ok")
	}
	mux.HandleFunc("/readyz", ready)
	mux.HandleFunc("/healthz", ready)
	return mux
}

// Addr is where the endpoint listens ("" when disabled).
func (s *Server) Addr() string {
	if s == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Serve serves until ctx is cancelled.
func (s *Server) Serve(ctx context.Context) {
	if s == nil {
		return
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
	}()
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("metrics/health server", "err", err)
	}
}
