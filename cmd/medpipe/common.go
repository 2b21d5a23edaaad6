package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/medpipe/medpipe/bus"
)

// logFlags configures slog.
type logFlags struct {
	format string
	level  string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", l.format)
}

// defaultDataDir is medpipe up's data directory, where the other commands
// also look for the credentials up generated.
const defaultDataDir = "medpipe-data"

// Files in up's data directory (see bus.CredentialsDir, bus.JetStreamKeyFile).
const (
	credentialsDir   = bus.CredentialsDir
	jetStreamKeyFile = bus.JetStreamKeyFile
)

// natsFlags are the flags of every command that talks to NATS.
type natsFlags struct {
	urls         string
	streams      bus.StreamOptions
	user         string
	passwordFile string
	creds        string
	nkey         string
	credsDir     string
	tls          tlsFiles
	// role is the user the command connects as when no credential flag is
	// given and --nats-credentials-dir holds that role's password.
	role bus.Role
	fs   *flag.FlagSet // to tell the stream flags given from the defaults
}

func (n *natsFlags) register(fs *flag.FlagSet) {
	n.registerConn(fs)
	n.registerStreams(fs)
}

// registerConn registers the connection flags (server, credentials, TLS):
// the same for every command that talks to NATS.
func (n *natsFlags) registerConn(fs *flag.FlagSet) {
	fs.StringVar(&n.urls, "nats", bus.DefaultURL, "NATS server URL(s), comma-separated (every node of a cluster; tls://… for TLS)")
	fs.StringVar(&n.user, "nats-user", "", "NATS username (password from --nats-password-file or MEDPIPE_NATS_PASSWORD)")
	fs.StringVar(&n.passwordFile, "nats-password-file", "", "file holding the NATS password")
	fs.StringVar(&n.creds, "nats-creds", "", "NATS credentials file (.creds: user JWT and nkey seed)")
	fs.StringVar(&n.nkey, "nats-nkey", "", "file holding a NATS user nkey seed")
	n.tls.register(fs, "nats", "PEM CA bundle that signs the NATS servers' certificates (turns TLS on)", "PEM client certificate for NATS (mutual TLS)")
	fs.StringVar(&n.credsDir, "nats-credentials-dir", filepath.Join(defaultDataDir, credentialsDir), "without --nats-user/--nats-creds/--nats-nkey: connect as this command's role with the password medpipe up generated here (<role>.password)")
}

// options are the nats.go options for the credentials and TLS given.
func (n *natsFlags) options() ([]nats.Option, error) {
	var opts []nats.Option
	if n.user != "" {
		pw, err := secret("nats-password-file", n.passwordFile, "MEDPIPE_NATS_PASSWORD")
		if err != nil {
			return nil, err
		}
		opts = append(opts, bus.UserOptions(n.user, pw)...)
	} else if n.creds == "" && n.nkey == "" && n.role != "" && n.credsDir != "" {
		pw, err := bus.ReadCredential(n.credsDir, n.role)
		switch {
		case err == nil:
			opts = append(opts, bus.UserOptions(string(n.role), pw)...)
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("--nats-credentials-dir: %w", err)
		}
	}
	if n.creds != "" {
		if _, err := os.Stat(n.creds); err != nil {
			return nil, fmt.Errorf("--nats-creds: %w", err)
		}
		opts = append(opts, nats.UserCredentials(n.creds))
	}
	if n.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(n.nkey)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey %s: %w", n.nkey, err)
		}
		opts = append(opts, o)
	}
	cfg, err := n.tls.clientConfig()
	if err != nil {
		return nil, err
	}
	if cfg != nil {
		opts = append(opts, nats.Secure(cfg))
	}
	return opts, nil
}

func (n *natsFlags) registerStreams(fs *flag.FlagSet) {
	n.fs = fs
	fs.IntVar(&n.streams.Partitions, "partitions", 0, fmt.Sprintf("RAW/READINGS partitions when creating the streams (0: adopt the existing streams', %d for new ones)", bus.DefaultPartitions))
	fs.IntVar(&n.streams.Replicas, "replicas", 1, "stream replicas (3 on a JetStream cluster)")
	fs.DurationVar(&n.streams.RawMaxAge, "raw-max-age", bus.DefaultRawMaxAge, "how long RAW keeps frames")
	fs.Int64Var(&n.streams.RawMaxBytes, "raw-max-bytes", bus.DefaultRawMaxBytes, "RAW size limit in bytes; the oldest frames go first")
	fs.DurationVar(&n.streams.ReadingsMaxAge, "readings-max-age", bus.DefaultReadingsMaxAge, "how long READINGS keeps readings")
	fs.Var((*compressionFlag)(&n.streams.Compression), "stream-compression", "compression of the streams on disk (`algorithm`): none, or s2 (35 % less disk for RAW, and a longer latency tail)")
}

// compressionFlag reads a stream compression by its JetStream name.
type compressionFlag jetstream.StoreCompression

func (c *compressionFlag) String() string {
	if c == nil || jetstream.StoreCompression(*c) == jetstream.NoCompression {
		return "none"
	}
	return "s2"
}

func (c *compressionFlag) Set(s string) error {
	switch strings.ToLower(s) {
	case "none", "":
		*c = compressionFlag(jetstream.NoCompression)
	case "s2":
		*c = compressionFlag(jetstream.S2Compression)
	default:
		return fmt.Errorf("unknown stream compression %q (want none or s2)", s)
	}
	return nil
}

// givenStreams is the stream options with only the flags given (on the
// command line or in the environment): a limit left at its default is not
// an opinion about an existing stream.
func (n *natsFlags) givenStreams() bus.StreamOptions {
	o := n.streams
	if n.fs == nil {
		return o
	}
	given := map[string]bool{}
	n.fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if !given["replicas"] {
		o.Replicas = 0
	}
	if !given["raw-max-age"] {
		o.RawMaxAge = 0
	}
	if !given["raw-max-bytes"] {
		o.RawMaxBytes = 0
	}
	if !given["readings-max-age"] {
		o.ReadingsMaxAge = 0
	}
	o.CompressionSet = given["stream-compression"]
	return o
}

// connect connects to NATS and verifies the streams (never changing them;
// see bus.VerifyStreams). It returns the partition count in force.
func (n *natsFlags) connect(ctx context.Context, name string, log *slog.Logger) (*nats.Conn, jetstream.JetStream, int, error) {
	opts, err := n.options()
	if err != nil {
		return nil, nil, 0, err
	}
	nc, js, err := bus.Connect(ctx, bus.ConnectOptions{URLs: n.urls, Name: name, Log: log, Options: opts})
	if err != nil {
		return nil, nil, 0, err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	parts, err := bus.VerifyStreams(sctx, js, n.givenStreams(), log)
	if err != nil {
		nc.Close()
		return nil, nil, 0, err
	}
	return nc, js, parts, nil
}

// healthCheck reports whether one part of a process is working.
type healthCheck struct {
	name  string
	check func() error
}

// natsHealth reports a NATS connection's state.
func natsHealth(nc *nats.Conn) healthCheck {
	return healthCheck{"nats", func() error {
		if s := nc.Status(); s != nats.CONNECTED {
			return fmt.Errorf("%s", s)
		}
		return nil
	}}
}

// newRegistry returns a Prometheus registry with Go runtime and process metrics.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// opsServer serves /metrics and /healthz.
type opsServer struct {
	srv *http.Server
	ln  net.Listener
}

// listenOps binds the metrics and health endpoint. An empty address disables it.
func listenOps(addr string, pprof bool, reg *prometheus.Registry, checks ...healthCheck) (*opsServer, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics/health listener on %s (change --http): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if pprof {
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		var failed []string
		for _, c := range checks {
			if err := c.check(); err != nil {
				failed = append(failed, c.name+": "+err.Error())
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(failed) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(failed, "\n"))
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return &opsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}, nil
}

// Addr is where the endpoint listens ("" when disabled).
func (o *opsServer) Addr() string {
	if o == nil {
		return ""
	}
	return o.ln.Addr().String()
}

// serve runs until ctx is cancelled.
func (o *opsServer) serve(ctx context.Context) {
	if o == nil {
		return
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = o.srv.Shutdown(sctx)
	}()
	if err := o.srv.Serve(o.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		slog.Error("metrics/health server", "err", err)
	}
}
