package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/ops"
	"github.com/medpipe/medpipe/pipeline"
	"github.com/medpipe/medpipe/stage"
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
		return nil, usageErr(fmt.Errorf("--log-level: %w", err))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageErr(fmt.Errorf("--log-format %q: want text or json", l.format))
}

// natsFlags are the flags of every command that talks to NATS.
type natsFlags struct {
	urls    string
	streams bus.StreamOptions
	auth    bus.Auth
	// role is the user the command connects as when no credential flag is
	// given and --nats-credentials-dir holds that role's password.
	role bus.Role
	fs   *flag.FlagSet // to tell the stream flags given from the defaults
}

// registerConn registers where NATS is and how to log in, without the
// stream limits: replay, archive export and keys read streams and buckets
// and must never change their limits.
func (n *natsFlags) registerConn(fs *flag.FlagSet) {
	fs.StringVar(&n.urls, "nats", bus.DefaultURL, "NATS server URL(s), comma-separated (every node of a cluster; tls://… for TLS)")
	fs.StringVar(&n.auth.User, "nats-user", "", "NATS username (password from --nats-password-file or "+bus.ClientPasswordEnv+")")
	fs.StringVar(&n.auth.PasswordFile, "nats-password-file", "", "file holding the NATS password")
	fs.StringVar(&n.auth.Creds, "nats-creds", "", "NATS credentials file (.creds: user JWT and nkey seed)")
	fs.StringVar(&n.auth.NKey, "nats-nkey", "", "file holding a NATS user nkey seed")
	registerTLS(fs, &n.auth.TLS, "nats", "PEM CA bundle that signs the NATS servers' certificates (turns TLS on)", "PEM client certificate for NATS (mutual TLS)")
	fs.StringVar(&n.auth.CredentialsDir, "nats-credentials-dir", filepath.Join(pipeline.DefaultDataDir, bus.CredentialsDir), "without --nats-user/--nats-creds/--nats-nkey: connect as this command's role with the password medpipe up generated here (<role>.password)")
}

// register registers the connection and the stream limits.
func (n *natsFlags) register(fs *flag.FlagSet) {
	n.registerConn(fs)
	n.registerStreams(fs)
}

// conn are the bus.Connect options for a client named name.
func (n *natsFlags) conn(name string, log *slog.Logger) bus.ConnectOptions {
	a := n.auth
	a.Role = n.role
	return bus.ConnectOptions{URLs: n.urls, Name: name, Log: log, Auth: a}
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
	if !given["duplicate-window"] {
		o.DuplicateWindow = 0
	}
	o.CompressionSet = given["stream-compression"]
	return o
}

func (n *natsFlags) registerStreams(fs *flag.FlagSet) {
	n.fs = fs
	fs.IntVar(&n.streams.Partitions, "partitions", 0, fmt.Sprintf("RAW/READINGS partitions when creating the streams (0: adopt the existing streams'; for new ones %d, and in up two a core from 4 to %[1]d)", bus.DefaultPartitions))
	fs.IntVar(&n.streams.Replicas, "replicas", bus.DefaultReplicas, "stream replicas (3 on a JetStream cluster)")
	fs.DurationVar(&n.streams.RawMaxAge, "raw-max-age", bus.DefaultRawMaxAge, "how long RAW keeps frames")
	fs.Int64Var(&n.streams.RawMaxBytes, "raw-max-bytes", bus.DefaultRawMaxBytes, "RAW size limit in bytes; the oldest frames go first")
	fs.DurationVar(&n.streams.ReadingsMaxAge, "readings-max-age", bus.DefaultReadingsMaxAge, "how long READINGS keeps readings")
	fs.DurationVar(&n.streams.DuplicateWindow, "duplicate-window", bus.DefaultDuplicateWindow, "how long the streams remember a message id, so that a retried publish is stored once (longer: more server memory and a longer latency tail)")
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

// commonFlags are those of every long-running command.
type commonFlags struct {
	http  string
	pprof bool
	log   logFlags
}

func (c *commonFlags) register(fs *flag.FlagSet, defaultHTTP string) {
	fs.StringVar(&c.http, "http", defaultHTTP, "address of the /metrics, /livez, /readyz and /healthz endpoint (empty: off)")
	fs.BoolVar(&c.pprof, "pprof", false, "also serve Go's profiler on --http at /debug/pprof/ (for measuring; keep --http private)")
	c.log.register(fs)
}

// process is the stage bootstrap for these flags.
func (c *commonFlags) process(stderr io.Writer) (*stage.Process, error) {
	log, err := c.log.logger(stderr)
	if err != nil {
		return nil, err
	}
	return stage.New(stage.Options{HTTP: c.http, Pprof: c.pprof, Log: log, Build: buildInfo()}), nil
}

// ops binds the metrics and health endpoint of a command that is not a
// pipeline stage (simulate).
func (c *commonFlags) ops(g prometheus.Gatherer, log *slog.Logger, checks ...ops.Check) (*ops.Server, error) {
	s, err := ops.Listen(ops.Options{Addr: c.http, Pprof: c.pprof, Gatherer: g, Checks: checks, Log: log})
	if err != nil {
		return nil, fmt.Errorf("%w (change --http)", err)
	}
	return s, nil
}
