// Package stage starts medpipe stages the one way every command does: a
// NATS connection per stage (streams verified, never changed), a metrics
// registry, the ops endpoint with each stage's readiness check, and a run
// that stops every stage when one fails and returns once all have drained.
// `medpipe ingest`, `decrypt`, `publish` and `up` differ only in which
// stages they add.
package stage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/ops"
)

// SetupTimeout bounds each start-up call to JetStream (streams, KV buckets).
const SetupTimeout = 30 * time.Second

// Runner is a stage: it works until its context is cancelled, then drains.
type Runner interface {
	Run(ctx context.Context) error
}

// Options configures a Process.
type Options struct {
	// HTTP is the ops endpoint's address (empty: off); Pprof adds the profiler.
	HTTP  string
	Pprof bool
	// Log is the process's logger.
	Log *slog.Logger
	// Metrics is the registry the stages register on and the endpoint
	// serves (nil: a new one, ops.NewRegistry).
	Metrics *prometheus.Registry
	// Build is exported as medpipe_build_info when its Version is set.
	Build ops.Build
}

// Process is one medpipe process: its stages, their NATS connections and
// its ops endpoint.
type Process struct {
	o       Options
	reg     *prometheus.Registry
	checks  []ops.Check
	names   []string
	runners []Runner
	conns   []*nats.Conn
	lags    []lagWatch
	lag     *prometheus.GaugeVec
}

// New returns an empty process.
func New(o Options) *Process {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = ops.NewRegistry()
	}
	p := &Process{o: o, reg: o.Metrics}
	if o.Build.Version != "" {
		p.reg.MustRegister(o.Build.Collector())
	}
	return p
}

// Log is the process's logger.
func (p *Process) Log() *slog.Logger { return p.o.Log }

// Metrics is the registry every stage registers its metrics on.
func (p *Process) Metrics() *prometheus.Registry { return p.reg }

// Connect opens a NATS connection that the process closes when it ends and
// whose state is one of its readiness checks.
func (p *Process) Connect(ctx context.Context, o bus.ConnectOptions) (*nats.Conn, jetstream.JetStream, error) {
	if o.Log == nil {
		o.Log = p.o.Log
	}
	nc, js, err := bus.Connect(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	p.conns = append(p.conns, nc)
	p.Check("nats", func() error { return bus.Health(nc) })
	return nc, js, nil
}

// ConnectStreams connects (see Connect) and verifies the streams, never
// changing them (bus.VerifyStreams: a flag contradicting a stream is a
// warning), returning the partition count in force.
func (p *Process) ConnectStreams(ctx context.Context, o bus.ConnectOptions, so bus.StreamOptions) (*nats.Conn, jetstream.JetStream, int, error) {
	nc, js, err := p.Connect(ctx, o)
	if err != nil {
		return nil, nil, 0, err
	}
	vctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	parts, err := bus.VerifyStreams(vctx, js, so, p.o.Log)
	if err != nil {
		return nil, nil, 0, err
	}
	return nc, js, parts, nil
}

// ApplyStreams is the admin's action (medpipe up at start, medpipe streams
// apply) within SetupTimeout: see bus.ApplyStreams.
func ApplyStreams(ctx context.Context, js jetstream.JetStream, so bus.StreamOptions) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	return bus.ApplyStreams(ctx, js, so)
}

// Check adds a readiness check to /readyz (and /healthz).
func (p *Process) Check(name string, check func() error) {
	p.checks = append(p.checks, ops.Check{Name: name, Check: check})
}

// Add adds a stage, with its readiness check when health is not nil.
func (p *Process) Add(name string, r Runner, health func() error) {
	p.names = append(p.names, name)
	p.runners = append(p.runners, r)
	if health != nil {
		p.Check(name, health)
	}
}

// Close closes the process's NATS connections. Run closes them itself.
func (p *Process) Close() {
	for _, nc := range p.conns {
		nc.Close()
	}
	p.conns = nil
}

// Run binds the ops endpoint, logs msg with attrs and the endpoint's address
// (the start-up line), then runs every stage until ctx is cancelled and all
// have drained. A stage that fails cancels the others.
func (p *Process) Run(ctx context.Context, msg string, attrs ...any) error {
	defer p.Close()
	srv, err := ops.Listen(ops.Options{Addr: p.o.HTTP, Pprof: p.o.Pprof, Gatherer: p.reg, Checks: p.checks, Log: p.o.Log})
	if err != nil {
		return fmt.Errorf("%w (change --http)", err)
	}
	p.o.Log.Info(msg, append(attrs, "http", srv.Addr())...)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i, s := range p.runners {
		name := p.names[i]
		wg.Go(func() {
			// A stage stopped by the cancellation it was asked to obey has not failed.
			if err := s.Run(ctx); err != nil && !(ctx.Err() != nil && errors.Is(err, context.Canceled)) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				mu.Unlock()
				cancel()
			}
		})
	}
	wg.Go(func() { srv.Serve(ctx) })
	if len(p.lags) > 0 {
		g := p.lagGauge()
		wg.Go(func() { pollLag(ctx, g, p.lags, LagInterval, p.o.Log) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// LoopbackAddr turns a wildcard listen address into one a local client can dial.
func LoopbackAddr(addr string) string {
	h, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(h); h == "" || ip != nil && ip.IsUnspecified() {
		h = "127.0.0.1"
	}
	return net.JoinHostPort(h, port)
}
