package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/ingest"
	"github.com/medpipe/medpipe/publish"
	"github.com/medpipe/medpipe/secrets"
	"github.com/medpipe/medpipe/stage"
	"github.com/medpipe/medpipe/wire"
)

// ingestFlags configures the TCP edge.
type ingestFlags struct {
	listen      string
	maxConns    int
	maxConnsIP  int
	maxRate     float64
	maxBad      int
	maxFrame    int
	maxPending  int
	idleGap     time.Duration
	idleTimeout time.Duration
	tlsListen   string
	tls         secrets.TLSFiles
}

func (f *ingestFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "listen", ":9998", "address devices connect to")
	fs.IntVar(&f.maxConns, "max-conns", 20000, "most device connections at once; more are closed on arrival")
	fs.StringVar(&f.tlsListen, "tls-listen", ":9997", "address of the TLS device port, opened when --tls-cert is given (the plain --listen port stays)")
	registerTLS(fs, &f.tls, "tls", "PEM CA bundle: devices on the TLS port must present a certificate it signs (mutual TLS)", "PEM certificate of the TLS device port")
	fs.IntVar(&f.maxConnsIP, "max-conns-per-ip", 0, "most device connections at once from one remote address (0: no bound; devices behind one NAT share an address)")
	fs.Float64Var(&f.maxRate, "max-frame-rate", 100, "most frames per second read from one connection; a faster device is slowed (not read), not cut off (-1: no bound)")
	fs.IntVar(&f.maxBad, "max-bad-frames", 10, "close a connection once decrypt has dead-lettered this many of its frames (unknown key, tampered…; -1: never)")
	fs.IntVar(&f.maxFrame, "max-frame", wire.DefaultMaxFrame, "largest legacy frame in bytes; a longer one closes the connection")
	fs.IntVar(&f.maxPending, "ingest-in-flight", 2048, "most frames awaiting RAW's acknowledgement over all connections; reads wait beyond it (keep below the NATS connection's 4096)")
	fs.DurationVar(&f.idleGap, "idle-gap", wire.DefaultIdleGap, "a legacy frame ends when no byte follows its last block for this long")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", 2*time.Minute, "close a device connection silent for this long")
}

func (f *ingestFlags) options(parts int, log *slog.Logger, reg prometheus.Registerer) (ingest.Options, error) {
	o := ingest.Options{
		Listen: f.listen, Partitions: parts, MaxConns: f.maxConns, MaxConnsPerIP: f.maxConnsIP, MaxFrameRate: f.maxRate, MaxBadFrames: f.maxBad, MaxFrame: f.maxFrame,
		MaxPendingFrames: f.maxPending, IdleGap: f.idleGap, IdleTimeout: f.idleTimeout, Log: log.With("stage", "ingest"), Metrics: reg,
	}
	if f.tls.Set() {
		cfg, err := f.tls.ServerConfig()
		if err != nil {
			return o, err
		}
		o.TLSConfig, o.TLSListen = cfg, f.tlsListen
	}
	return o, nil
}

// tlsAddr is the edge's TLS port for the start-up line ("" without TLS).
func tlsAddr(e *ingest.Edge) string {
	if a := e.TLSAddr(); a != nil {
		return a.String()
	}
	return ""
}

// decryptFlags configures the decrypt workers.
type decryptFlags struct {
	keys        string
	maxInFlight int
}

func (f *decryptFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.keys, "keys", "", "device keys file: JSON lines {\"id\":…,\"key\":…,\"iv\":…}; without it, keys come from the registry in JetStream KV (see medpipe keys)")
	fs.IntVar(&f.maxInFlight, "decrypt-in-flight", 512, "frames in flight per partition")
}

func (f *decryptFlags) options(devs []wire.Device, parts int, log *slog.Logger, reg prometheus.Registerer) decrypt.Options {
	return decrypt.Options{Keys: devs, Partitions: parts, MaxInFlight: f.maxInFlight, Log: log.With("stage", "decrypt"), Metrics: reg}
}

// publishFlags configures the MQTT bridge.
type publishFlags struct {
	mqtt         string
	user         string
	passwordFile string
	password     string // set by up for its own broker; otherwise from the file or env
	clientID     string
	prefix       string
	qos          int
	retain       bool
	jsonTopic    bool
	jsonOnly     bool
	addressEvery int
	maxInFlight  int
	tls          secrets.TLSFiles
}

func (f *publishFlags) register(fs *flag.FlagSet, defaultMQTT string) {
	fs.StringVar(&f.mqtt, "mqtt", defaultMQTT, "MQTT broker URL: tcp://host:port or ssl://host:port")
	fs.StringVar(&f.user, "mqtt-user", "", "MQTT username (password from --mqtt-password-file or MEDPIPE_MQTT_PASSWORD)")
	fs.StringVar(&f.passwordFile, "mqtt-password-file", "", "file holding the MQTT password")
	registerTLS(fs, &f.tls, "mqtt", "PEM CA bundle that signs the broker's certificate (for ssl:// URLs; system roots otherwise)", "PEM client certificate for the broker (mutual TLS)")
	fs.StringVar(&f.clientID, "mqtt-client-id", "", "MQTT client id (default: medpipe-publish-<random>)")
	fs.StringVar(&f.prefix, "prefix", "Pico", "first level of every MQTT topic")
	fs.IntVar(&f.qos, "qos", 1, "MQTT QoS of published messages: 0, 1 or 2")
	fs.BoolVar(&f.retain, "retain", false, "publish with the retained flag")
	fs.BoolVar(&f.jsonTopic, "json-topic", false, "also publish each reading as one JSON message on <prefix>/<id>/reading")
	fs.BoolVar(&f.jsonOnly, "json-only", false, "publish each reading only as the JSON message on <prefix>/<id>/reading (1 MQTT message per reading instead of 7+)")
	fs.IntVar(&f.addressEvery, "address-every", 50, "publish a device's addresses on its first reading and every this many")
	fs.IntVar(&f.maxInFlight, "publish-in-flight", 512, "readings in flight to the broker per partition")
}

func (f *publishFlags) options(parts int, log *slog.Logger, reg prometheus.Registerer) (publish.Options, error) {
	if f.qos < 0 || f.qos > 2 {
		return publish.Options{}, fmt.Errorf("--qos %d: want 0, 1 or 2", f.qos)
	}
	password := f.password
	if password == "" {
		var err error
		if password, err = secrets.Read("mqtt-password-file", f.passwordFile, "MEDPIPE_MQTT_PASSWORD"); err != nil {
			return publish.Options{}, err
		}
	}
	tlsConfig, err := f.tls.ClientConfig()
	if err != nil {
		return publish.Options{}, err
	}
	return publish.Options{
		MQTT:   publish.MQTTOptions{URL: f.mqtt, ClientID: f.clientID, Username: f.user, Password: password, TLS: tlsConfig},
		Prefix: f.prefix, QoS: byte(f.qos), QoSSet: true, Retain: f.retain, JSONTopic: f.jsonTopic, JSONOnly: f.jsonOnly, AddressEvery: f.addressEvery,
		Partitions: parts, MaxInFlight: f.maxInFlight, Log: log.With("stage", "publish"), Metrics: reg,
	}, nil
}

func runIngest(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("ingest", "The TCP edge: frames legacy device streams and stores them, still encrypted, in JetStream RAW.", stderr)
	var common commonFlags
	var nf natsFlags
	var inf ingestFlags
	common.register(fs, ":9101")
	nf.register(fs)
	nf.role = bus.RoleIngest
	inf.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	p, err := common.process(stderr)
	if err != nil {
		return err
	}
	defer p.Close()
	nc, js, parts, err := p.ConnectStreams(ctx, nf.conn("medpipe-ingest", p.Log()), nf.givenStreams())
	if err != nil {
		return err
	}
	iopts, err := inf.options(parts, p.Log(), p.Metrics())
	if err != nil {
		return err
	}
	edge, err := ingest.New(js, iopts)
	if err != nil {
		return fmt.Errorf("%w (change --listen or --tls-listen)", err)
	}
	p.Add("ingest", edge, edge.Health)
	return p.Run(ctx, "medpipe ingest started", "devices", edge.Addr().String(), "devices_tls", tlsAddr(edge), "nats", nc.ConnectedUrlRedacted(), "partitions", parts)
}

func runDecrypt(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("decrypt", "Decrypt workers: identify each frame's device, decrypt and validate it, publish the reading to READINGS.", stderr)
	var common commonFlags
	var nf natsFlags
	var df decryptFlags
	common.register(fs, ":9102")
	nf.register(fs)
	nf.role = bus.RoleDecrypt
	df.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	p, err := common.process(stderr)
	if err != nil {
		return err
	}
	defer p.Close()
	var devs []wire.Device
	if df.keys != "" {
		if devs, err = decrypt.ReadKeysFile(df.keys, p.Log()); err != nil {
			return err
		}
	}
	nc, js, parts, err := p.ConnectStreams(ctx, nf.conn("medpipe-decrypt", p.Log()), nf.givenStreams())
	if err != nil {
		return err
	}
	opts := df.options(devs, parts, p.Log(), p.Metrics())
	keySource := "file " + df.keys
	rctx, cancel := context.WithTimeout(ctx, stage.SetupTimeout)
	defer cancel()
	if df.keys == "" {
		if opts.Registry, err = registry.Bind(rctx, js, nf.streams.Replicas); err != nil {
			return err
		}
		keySource = "registry " + registry.Bucket
	}
	if opts.Conns, err = bus.OpenConnStore(rctx, js, nf.streams.Replicas); err != nil {
		return err
	}
	if opts.Seqs, err = bus.OpenSeqStore(rctx, js, nf.streams.Replicas); err != nil {
		return err
	}
	w, err := decrypt.New(js, opts)
	if err != nil {
		return err
	}
	p.Add("decrypt", w, w.Health)
	return p.Run(ctx, "medpipe decrypt started", "nats", nc.ConnectedUrlRedacted(), "keys", keySource, "partitions", parts)
}

func runPublish(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("publish", "The MQTT bridge: republishes READINGS into the MQTT topics dashboards subscribe to.", stderr)
	var common commonFlags
	var nf natsFlags
	var pf publishFlags
	common.register(fs, ":9103")
	nf.register(fs)
	nf.role = bus.RolePublish
	pf.register(fs, "tcp://127.0.0.1:1883")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	p, err := common.process(stderr)
	if err != nil {
		return err
	}
	defer p.Close()
	nc, js, parts, err := p.ConnectStreams(ctx, nf.conn("medpipe-publish", p.Log()), nf.givenStreams())
	if err != nil {
		return err
	}
	opts, err := pf.options(parts, p.Log(), p.Metrics())
	if err != nil {
		return err
	}
	b, err := publish.New(js, opts)
	if err != nil {
		return err
	}
	p.Add("publish", b, nil)
	p.Check("mqtt", b.Health)
	return p.Run(ctx, "medpipe publish started", "nats", nc.ConnectedUrlRedacted(), "mqtt", bus.RedactURLs(pf.mqtt), "prefix", pf.prefix, "qos", pf.qos, "partitions", parts)
}
