// Package pipeline is the whole medpipe pipeline in one process, as
// `medpipe up` runs it: an embedded nats-server (JetStream encrypted at
// rest, MQTT, one user per role) with ingest, decrypt and publish, each on
// its own connection as its own role, keys from the device registry, and
// optionally simulated devices so that data flows at once.
//
// It is the thing the CLI runs, for embedding and tests alike:
//
//	p, err := pipeline.New(ctx, pipeline.Options{DataDir: dir, Simulate: 10})
//	if err != nil { … }
//	err = p.Run(ctx) // until ctx is cancelled; then drains and shuts down
//
// Every field of Options has a documented default, so the zero Options is
// a working pipeline on today's ports.
package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/ingest"
	"github.com/medpipe/medpipe/ops"
	"github.com/medpipe/medpipe/publish"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/stage"
	"github.com/medpipe/medpipe/wire"
)

// Defaults of Options (and of `medpipe up`'s flags).
const (
	// DefaultDataDir is the data directory, where the other commands also
	// look for the credentials it generates.
	DefaultDataDir = "medpipe-data"
	// DefaultHTTP is the CLI's ops endpoint; an embedder's zero value is off.
	DefaultHTTP = "127.0.0.1:9100"
	// DefaultProtocol mixes simulated devices: every third one v2, the
	// legacy ones simulator.DefaultVariant (see simulator.Assign).
	DefaultProtocol = "mixed"
	// SimulatedKeys is the keys file of simulated devices, in DataDir.
	SimulatedKeys = "simulated-keys.jsonl"
)

// Options configures a Pipeline. Zero values take the defaults given.
type Options struct {
	// DataDir holds JetStream's store, the generated password of every role
	// (bus.CredentialsDir; dashboards log in to MQTT as "dashboard"), the
	// store's encryption key and the simulated devices' keys (default
	// DefaultDataDir; created with mode 0700).
	DataDir string
	// Host is the address the embedded NATS, MQTT and monitoring listeners
	// bind to (default bus.DefaultEmbeddedHost).
	Host string
	// NATSPort, MQTTPort and MonitorPort are the embedded listeners' ports,
	// as in bus.EmbeddedOptions: 0 takes bus.DefaultNATSPort,
	// bus.DefaultMQTTPort and bus.DefaultMonitorPort, -1 a free port, and
	// -2 turns MQTT or monitoring off.
	NATSPort, MQTTPort, MonitorPort int
	// HTTP is the address of /metrics, /livez, /readyz and /healthz (empty:
	// off); Pprof also serves Go's profiler there.
	HTTP  string
	Pprof bool
	// Log receives every stage's log lines; nil uses slog.Default().
	Log *slog.Logger
	// Metrics is the registry every stage registers on and /metrics serves
	// (nil: a new one). Give it to build a Publish.Sink on the same registry.
	Metrics *prometheus.Registry
	// Build is exported as medpipe_build_info when its Version is set.
	Build ops.Build
	// Streams are the stream limits applied at start; only the fields set
	// count (bus.ApplyStreams: a zero is no opinion about an existing stream).
	// Streams created now get Streams.NewPartitions partitions, by default
	// PartitionsFor the machine's cores.
	Streams bus.StreamOptions
	// Keys seed the device registry at start; devices already there keep
	// their keys, rotations and revocations, so `medpipe keys` works live.
	Keys []wire.Device

	// Ingest, Decrypt and Publish configure the stages. Run sets their
	// Partitions and Metrics, decrypt's Registry and Seqs, and a Log
	// left nil (the pipeline's, with a "stage" attribute).
	Ingest  ingest.Options
	Decrypt decrypt.Options
	// Publish without a Sink and without MQTT.URL writes to the embedded
	// MQTT broker, logged in as the publish role.
	Publish publish.Options
	// Destination names Publish's sink in the start-up line (default: its
	// MQTT URL).
	Destination string

	// Simulate starts this many simulated devices, whose keys are kept in
	// DataDir (SimulatedKeys) and seed the registry. The per-address bounds
	// of Ingest are raised to let them all connect from loopback at once.
	Simulate int
	// Rate is each simulated device's readings per second (default
	// simulator.DefaultRate).
	Rate float64
	// Protocol and Variant choose the simulated devices' protocol and legacy
	// variant (DefaultProtocol, simulator.DefaultVariant; see simulator.Assign).
	Protocol, Variant string
	// StatusEvery logs a status line this often (0: never).
	StatusEvery time.Duration
}

// Pipeline is a started pipeline: its server listens and its stages are
// built; Run runs them.
type Pipeline struct {
	o    Options
	proc *stage.Process
	// Server is the embedded nats-server.
	Server *bus.Embedded
	// Edge is the ingest stage; Edge.Addr is where devices connect.
	Edge *ingest.Edge
	// Credentials are the roles' passwords (kept in DataDir).
	Credentials bus.Credentials

	known, added, simulated, parts int
}

// New starts the embedded server, applies the streams, seeds the registry
// and builds the stages; nothing reads or writes readings until Run. Close
// it when Run is not called.
func New(ctx context.Context, o Options) (_ *Pipeline, err error) {
	o = o.withDefaults()
	devs, sims, err := devices(o)
	if err != nil {
		return nil, err
	}
	creds, jsKey, err := loadSecrets(o.DataDir)
	if err != nil {
		return nil, err
	}
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{
		Host: o.Host, Port: o.NATSPort, MQTTPort: o.MQTTPort, HTTPPort: o.MonitorPort,
		StoreDir: filepath.Join(o.DataDir, "jetstream"), Credentials: creds, TopicPrefix: o.Publish.Prefix, JetStreamKey: jsKey,
	})
	if err != nil {
		return nil, err
	}
	p := &Pipeline{o: o, Server: e, Credentials: creds, simulated: len(sims),
		proc: stage.New(stage.Options{HTTP: o.HTTP, Pprof: o.Pprof, Log: o.Log, Metrics: o.Metrics, Build: o.Build})}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	known, err := p.admin(ctx, devs)
	if err != nil {
		return nil, err
	}
	p.known = known
	return p, p.build(ctx, sims)
}

// withDefaults fills in the documented defaults.
func (o Options) withDefaults() Options {
	if o.DataDir == "" {
		o.DataDir = DefaultDataDir
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = ops.NewRegistry()
	}
	if o.Rate <= 0 {
		o.Rate = simulator.DefaultRate
	}
	if o.Protocol == "" {
		o.Protocol = DefaultProtocol
	}
	if o.Variant == "" {
		o.Variant = simulator.DefaultVariant
	}
	return o
}

// admin creates the streams, consumers and buckets, applies the limits
// given, and seeds the registry, as the admin role; then its connection
// closes: the stages need no admin rights. It returns how many devices the
// registry knows.
func (p *Pipeline) admin(ctx context.Context, devs []wire.Device) (int, error) {
	nc, js, err := bus.Connect(ctx, bus.ConnectOptions{Name: "medpipe-up-admin", Log: p.o.Log, Options: p.userOpts(bus.RoleAdmin)})
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	so := p.o.Streams
	if so.NewPartitions == 0 {
		so.NewPartitions = PartitionsFor(runtime.GOMAXPROCS(0))
	}
	if p.parts, err = stage.ApplyStreams(ctx, js, so); err != nil {
		return 0, err
	}
	// The registry is the one source of keys, as for separate stages: the
	// keys and simulated devices seed it (as admin, audited), and
	// `medpipe keys` changes it while the pipeline runs.
	sctx, cancel := context.WithTimeout(ctx, stage.SetupTimeout)
	defer cancel()
	reg, err := registry.Open(sctx, js, p.o.Streams.Replicas)
	if err != nil {
		return 0, err
	}
	added, err := reg.Seed(sctx, devs)
	if err != nil {
		return 0, fmt.Errorf("seed the device registry: %w", err)
	}
	p.added = len(added)
	known, err := reg.List(sctx)
	if err != nil {
		return 0, err
	}
	return len(known), nil
}

// userOpts log in as role over loopback TCP to the server's own client
// listener, or in process when it has none. An in-process connection is
// a net.Pipe, which hands every write over synchronously to the server's
// reader goroutine: with thousands of device connections runnable in the
// same process each hand-over waits its turn, and the stages' traffic
// slowed with the number of devices (bench/README.md, issue 20). A socket
// buffers in the kernel instead.
func (p *Pipeline) userOpts(role bus.Role) []nats.Option {
	opts := bus.UserOptions(string(role), p.Credentials[role])
	if u := loopbackURL(p.Server.Server.Addr()); u != "" {
		return append(opts, func(o *nats.Options) error {
			o.Servers = []string{u}
			return nil
		})
	}
	return append(opts, nats.InProcessServer(p.Server.Server))
}

// loopbackURL is a NATS URL for a client listener's address, reached over
// loopback when it listens on every interface; "" for no TCP listener.
func loopbackURL(a net.Addr) string {
	t, ok := a.(*net.TCPAddr)
	if !ok || t == nil {
		return ""
	}
	ip := t.IP
	switch {
	case ip == nil || ip.IsUnspecified() && ip.To4() != nil:
		ip = net.IPv4(127, 0, 0, 1)
	case ip.IsUnspecified():
		ip = net.IPv6loopback
	}
	return "nats://" + net.JoinHostPort(ip.String(), strconv.Itoa(t.Port))
}

// build connects each stage as its own role and builds it.
func (p *Pipeline) build(ctx context.Context, sims []simulator.Device) error {
	// One connection and JetStream context per stage, as when they run as
	// separate processes: ingest's publishes must not use up the window of
	// pending publishes that decrypt needs, nor queue ahead of its acks,
	// and no stage may do another's work.
	connect := func(role bus.Role) (jetstream.JetStream, error) {
		_, js, err := p.proc.Connect(ctx, bus.ConnectOptions{Name: "medpipe-up-" + string(role), Options: p.userOpts(role)})
		return js, err
	}
	js, err := connect(bus.RoleIngest)
	if err != nil {
		return err
	}
	jsDecrypt, err := connect(bus.RoleDecrypt)
	if err != nil {
		return err
	}
	jsPublish, err := connect(bus.RolePublish)
	if err != nil {
		return err
	}
	o, reg := p.o, p.o.Metrics

	in := o.Ingest
	in.Partitions, in.Metrics, in.Log = p.parts, reg, stageLog(in.Log, o.Log, "ingest")
	// The simulated devices all connect from loopback at once: one NAT of
	// Simulate devices, which the per-address bounds must let in together.
	if in.MaxPreFramePerIP >= 0 { // negative: no bound, left so
		in.MaxPreFramePerIP = max(in.MaxPreFramePerIP, ingest.DefaultMaxPreFramePerIP, o.Simulate)
	}
	in.AcceptBurstPerIP = max(in.AcceptBurstPerIP, o.Simulate)
	if p.Edge, err = ingest.New(js, in); err != nil {
		return err
	}

	do := o.Decrypt
	do.Partitions, do.Metrics, do.Log = p.parts, reg, stageLog(do.Log, o.Log, "decrypt")
	sctx, cancel := context.WithTimeout(ctx, stage.SetupTimeout)
	defer cancel()
	if do.Registry, err = registry.Bind(sctx, jsDecrypt, o.Streams.Replicas); err != nil {
		return err
	}
	if do.Seqs, err = bus.OpenSeqStore(sctx, jsDecrypt, o.Streams.Replicas); err != nil {
		return err
	}
	worker, err := decrypt.New(jsDecrypt, do)
	if err != nil {
		return err
	}

	po := o.Publish
	po.Partitions, po.Metrics, po.Log = p.parts, reg, stageLog(po.Log, o.Log, "publish")
	if po.Sink == nil && po.MQTT.URL == "" {
		po.MQTT.URL = "tcp://" + stage.LoopbackAddr(p.Server.MQTTAddr)
		po.MQTT.Username, po.MQTT.Password = string(bus.RolePublish), p.Credentials[bus.RolePublish]
	}
	if p.o.Destination == "" {
		p.o.Destination = bus.RedactURLs(po.MQTT.URL)
	}
	bridge, err := publish.New(jsPublish, po)
	if err != nil {
		return err
	}

	p.proc.Add("ingest", p.Edge, p.Edge.Health)
	p.proc.Add("decrypt", worker, worker.Health)
	p.proc.Add("publish", bridge, nil)
	p.proc.WatchLag(jsDecrypt, bus.StreamRaw, bus.StageDecrypt, p.parts)
	p.proc.WatchLag(jsPublish, bus.StreamReadings, bus.StagePublish, p.parts)
	if err := reg.Register(stage.NewServerCollector(p.Server.Server)); err != nil {
		return fmt.Errorf("nats-server metrics: %w", err)
	}
	p.proc.Check("mqtt", bridge.Health)
	if len(sims) == 0 {
		return nil
	}
	epoch, err := simulator.BootEpoch(simulator.EpochFile(filepath.Join(o.DataDir, SimulatedKeys)))
	if err != nil {
		return err
	}
	fleet, err := simulator.NewFleet(simulator.Options{Server: stage.LoopbackAddr(p.Edge.Addr().String()), Devices: sims, Rate: o.Rate, Epoch: epoch, Log: o.Log.With("stage", "simulate")})
	if err != nil {
		return err
	}
	p.proc.Add("simulate", fleet, nil)
	return nil
}

// stageLog is a stage's logger: its own when given, else the pipeline's.
func stageLog(own, log *slog.Logger, name string) *slog.Logger {
	if own != nil {
		return own
	}
	return log.With("stage", name)
}

// Run logs the start-up line, then runs every stage until ctx is cancelled
// and all have drained (or one fails), and shuts the server down.
func (p *Pipeline) Run(ctx context.Context) error {
	defer p.Close()
	log := p.o.Log
	if p.known == 0 {
		log.Warn("no device keys: every frame will be dead-lettered; give --keys FILE or --simulate N, or run medpipe keys import")
	}
	if p.o.StatusEvery > 0 {
		go stage.StatusLine(ctx, log, p.o.Metrics, p.o.StatusEvery)
	}
	tlsAddr := ""
	if a := p.Edge.TLSAddr(); a != nil {
		tlsAddr = a.String()
	}
	err := p.proc.Run(ctx, "medpipe up",
		"devices", p.Edge.Addr().String(), "devices_tls", tlsAddr, "nats", p.Server.ClientURL(), "mqtt", p.Server.MQTTAddr, "monitor", p.Server.MonitorAddr,
		"publish_to", p.o.Destination, "data", p.o.DataDir, "credentials", filepath.Join(p.o.DataDir, bus.CredentialsDir), "keys", "registry "+registry.Bucket,
		"devices_known", p.known, "devices_added", p.added, "simulated", p.simulated, "partitions", p.parts)
	log.Info("medpipe up stopped", "err", err)
	return err
}

// Close closes the stages' connections, then shuts the server down. Run
// does so itself.
func (p *Pipeline) Close() {
	p.proc.Close() // before the server shuts down
	p.Server.Shutdown()
}

// loadSecrets loads or, on first start, generates the password of every
// role and the JetStream encryption key, in the data directory (0700,
// files 0600).
func loadSecrets(dataDir string) (bus.Credentials, string, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("data dir: %w", err)
	}
	creds, err := bus.LoadOrCreateCredentials(filepath.Join(dataDir, bus.CredentialsDir))
	if err != nil {
		return nil, "", err
	}
	key, err := bus.LoadOrCreateSecret(filepath.Join(dataDir, bus.JetStreamKeyFile))
	if err != nil {
		return nil, "", err
	}
	return creds, key, nil
}

// devices returns the keys that seed the registry (Keys plus simulated
// ones) and the simulated devices.
func devices(o Options) ([]wire.Device, []simulator.Device, error) {
	devs := o.Keys
	if o.Simulate <= 0 {
		return devs, nil, nil
	}
	simKeys, err := simulator.LoadOrCreateKeys(filepath.Join(o.DataDir, SimulatedKeys), o.Simulate, "sim")
	if err != nil {
		return nil, nil, fmt.Errorf("simulated device keys: %w", err)
	}
	known := map[string]bool{}
	for _, d := range devs {
		known[d.ID] = true
	}
	devs = append([]wire.Device(nil), devs...)
	sims := make([]simulator.Device, len(simKeys))
	for i, d := range simKeys {
		sd, err := simulator.Assign(d, i, o.Protocol, o.Variant)
		if err != nil {
			return nil, nil, err
		}
		sims[i] = sd
		if !known[d.ID] {
			devs = append(devs, d)
		}
	}
	return devs, sims, nil
}

// PartitionsFor is the partition count `up` gives the streams it creates
// on a machine of cores cores: two a core, from 4 to bus.DefaultPartitions.
// Every stage of `up` runs in its one process, so partitions beyond what
// its cores work on at once only split the load into more, smaller
// messages, each with its own store, delivery, ack and message id: on 2
// cores, 4 partitions instead of 16 held the same maximum with a much
// shorter latency tail at half of it (bench/README.md, sixth round). The
// scale-out path (`streams apply`) keeps bus.DefaultPartitions: there
// partitions bound how many processes share a stage.
func PartitionsFor(cores int) int {
	return min(max(2*cores, minUpPartitions), bus.DefaultPartitions)
}

// minUpPartitions is the fewest partitions PartitionsFor gives: decrypt and
// publish still work on several partitions while one waits for a store.
const minUpPartitions = 4
