package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/ingest"
	"github.com/medpipe/medpipe/publish"
	"github.com/medpipe/medpipe/secrets"
	"github.com/medpipe/medpipe/sink"
	"github.com/medpipe/medpipe/sink/webhook"
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
	rawBatch    int
	rawLinger   time.Duration
	idleGap     time.Duration
	idleTimeout time.Duration
	tlsListen   string
	tls         secrets.TLSFiles
	// Per-address limits and timeouts against abuse (see ingest.Options).
	maxPreFrameIP     int
	acceptRateIP      float64
	acceptBurstIP     int
	firstFrameTimeout time.Duration
	frameTimeout      time.Duration
	maxBlocks         int
	penalty           time.Duration
	penaltyStrikes    int
	proxyFrom         string
}

// register adds the ingest flags; rawBatch is --raw-batch's default: 1 in
// an ingest process, as a decrypt from before RAW batches reads, and
// ingest.DefaultRawBatch in up, whose decrypt is of the same build.
func (f *ingestFlags) register(fs *flag.FlagSet, rawBatch int) {
	fs.StringVar(&f.listen, "listen", ingest.DefaultListen, "address devices connect to")
	fs.IntVar(&f.maxConns, "max-conns", ingest.DefaultMaxConns, "most device connections at once; more are closed on arrival")
	fs.StringVar(&f.tlsListen, "tls-listen", ingest.DefaultTLSListen, "address of the TLS device port, opened when --tls-cert is given (the plain --listen port stays)")
	registerTLS(fs, &f.tls, "tls", "PEM CA bundle: devices on the TLS port must present a certificate it signs (mutual TLS)", "PEM certificate of the TLS device port")
	fs.IntVar(&f.maxConnsIP, "max-conns-per-ip", 0, "most device connections at once from one remote address (0: no bound; devices behind one NAT share an address)")
	fs.Float64Var(&f.maxRate, "max-frame-rate", ingest.DefaultMaxFrameRate, "most frames per second read from one connection; a faster device is slowed (not read), not cut off (-1: no bound)")
	fs.IntVar(&f.maxBad, "max-bad-frames", ingest.DefaultMaxBadFrames, "close a connection once decrypt has dead-lettered this many of its frames (unknown key, tampered…; -1: never)")
	fs.IntVar(&f.maxFrame, "max-frame", wire.DefaultMaxFrame, "largest v2 frame in bytes; a longer one closes the connection")
	fs.IntVar(&f.maxBlocks, "max-legacy-blocks", wire.DefaultMaxBlocks, "most blocks in a legacy frame (default: the longest reading a device writes); a longer one closes the connection")
	fs.IntVar(&f.maxPreFrameIP, "max-preframe-per-ip", ingest.DefaultMaxPreFramePerIP, "most connections from one address that have not yet sent a valid frame; connections that did send one do not count, so devices behind one NAT keep working (-1: no bound)")
	fs.Float64Var(&f.acceptRateIP, "accept-rate-per-ip", ingest.DefaultAcceptRatePerIP, "new connections per second from one address, after a burst of --accept-burst-per-ip; more are closed on arrival (-1: no bound)")
	fs.IntVar(&f.acceptBurstIP, "accept-burst-per-ip", ingest.DefaultAcceptBurstPerIP, "new connections from one address accepted at once before --accept-rate-per-ip applies")
	fs.DurationVar(&f.firstFrameTimeout, "first-frame-timeout", ingest.DefaultFirstFrameTimeout, "close a connection that has not sent a valid frame this long after it was accepted (PROXY header and TLS handshake included)")
	fs.DurationVar(&f.frameTimeout, "frame-timeout", wire.DefaultFrameTimeout, "close a connection whose frame (legacy or v2) is not complete this long after its first byte (slow loris)")
	fs.DurationVar(&f.penalty, "penalty", ingest.DefaultPenalty, "refuse new connections from an address for this long once it was cut for abuse --penalty-strikes times within about as long (-1s: never)")
	fs.IntVar(&f.penaltyStrikes, "penalty-strikes", ingest.DefaultPenaltyStrikes, "abuse cuts (bad bytes, timeouts, unknown key) of one address that earn it a --penalty")
	fs.StringVar(&f.proxyFrom, "proxy-protocol-from", "", "comma-separated addresses or CIDR prefixes of proxies (haproxy send-proxy-v2) whose connections start with a PROXY protocol v1/v2 header giving the device's address; a header from any other address is refused (empty: no PROXY protocol)")
	fs.IntVar(&f.maxPending, "ingest-in-flight", ingest.DefaultMaxPendingFrames, "most frames awaiting RAW's acknowledgement over all connections; reads wait beyond it (keep below the NATS connection's 4096)")
	fs.IntVar(&f.rawBatch, "raw-batch", rawBatch, fmt.Sprintf("most frames of a partition stored in one RAW message when ready together (%d in up; 1: a message each, as decrypt before batches reads; raise it once every decrypt process reads batches)", ingest.DefaultRawBatch))
	fs.DurationVar(&f.rawLinger, "raw-linger", ingest.DefaultRawLinger, "with --raw-batch: a busy partition stores at most one RAW message this often, gathering frames in between (a partition quiet for as long sends at once; 0: no linger)")
	fs.DurationVar(&f.idleGap, "idle-gap", wire.DefaultIdleGap, "a legacy frame ends when no byte follows its last block for this long")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", ingest.DefaultIdleTimeout, "close a device connection silent for this long")
}

func (f *ingestFlags) options(parts int, log *slog.Logger, reg prometheus.Registerer) (_ ingest.Options, err error) {
	defer func() { err = usageErr(err) }() // flag values that do not make options
	// --raw-linger 0 is no linger; ingest.Options' 0 is its default.
	o := ingest.Options{
		Listen: f.listen, Partitions: parts, MaxConns: f.maxConns, MaxConnsPerIP: f.maxConnsIP, MaxFrameRate: f.maxRate, MaxBadFrames: f.maxBad, MaxFrame: f.maxFrame,
		MaxPendingFrames: f.maxPending, RawBatch: f.rawBatch, RawLinger: cmp.Or(f.rawLinger, -1), IdleGap: f.idleGap, IdleTimeout: f.idleTimeout, Log: log.With("stage", "ingest"), Metrics: reg,
		MaxBlocks: f.maxBlocks, MaxPreFramePerIP: f.maxPreFrameIP, AcceptRatePerIP: f.acceptRateIP, AcceptBurstPerIP: f.acceptBurstIP,
		FirstFrameTimeout: f.firstFrameTimeout, FrameTimeout: f.frameTimeout, Penalty: f.penalty, PenaltyStrikes: f.penaltyStrikes,
	}
	if o.ProxyFrom, err = ingest.ParseProxyFrom(f.proxyFrom); err != nil {
		return o, fmt.Errorf("--proxy-protocol-from: %w", err)
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
	keys          string
	maxInFlight   int
	readingsBatch int
}

// register adds the decrypt flags; readingsBatch is --readings-batch's
// default: `up` batches (its publish is its own, of the same version), a
// decrypt process does not unless told, since publish processes older
// than batches would skip them.
func (f *decryptFlags) register(fs *flag.FlagSet, readingsBatch int) {
	fs.StringVar(&f.keys, "keys", "", "device keys file: JSON lines {\"id\":…,\"key\":…,\"iv\":…}; without it, keys come from the registry in JetStream KV (see medpipe keys)")
	fs.IntVar(&f.maxInFlight, "decrypt-in-flight", decrypt.DefaultMaxInFlight, "frames in flight per partition")
	fs.IntVar(&f.readingsBatch, "readings-batch", readingsBatch, fmt.Sprintf("most readings of a partition stored in one READINGS message when ready together (%d in up; 1: a message each, as publish before batches reads; raise it once every publish process reads batches)", decrypt.DefaultReadingsBatch))
}

func (f *decryptFlags) options(devs []wire.Device, parts int, log *slog.Logger, reg prometheus.Registerer) decrypt.Options {
	return decrypt.Options{Keys: devs, Partitions: parts, MaxInFlight: f.maxInFlight, ReadingsBatch: f.readingsBatch, Log: log.With("stage", "decrypt"), Metrics: reg}
}

// publishFlags configures the MQTT bridge.
type publishFlags struct {
	mqtt         string
	user         string
	passwordFile string
	clientID     string
	prefix       string
	qos          int
	retain       bool
	jsonTopic    bool
	jsonOnly     bool
	addressEvery int
	maxInFlight  int
	tls          secrets.TLSFiles
	sink         string
	webhook      webhookFlags
}

// webhookFlags configure the webhook sink.
type webhookFlags struct {
	url, authHeader, authFile string
	batch                     int
	linger, retryFor          time.Duration
	tls                       secrets.TLSFiles
}

func (f *webhookFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.url, "webhook-url", "", "webhook sink: the endpoint readings are POSTed to, as JSON arrays (http:// or https://)")
	fs.StringVar(&f.authHeader, "webhook-auth-header", webhook.DefaultAuthHeader, "webhook sink: the header that carries the value of --webhook-auth-file")
	fs.StringVar(&f.authFile, "webhook-auth-file", "", "webhook sink: file whose first line is the auth header's value, e.g. 'Bearer …' (or "+webhookAuthEnv+")")
	fs.IntVar(&f.batch, "webhook-batch", webhook.DefaultBatchSize, "webhook sink: most readings in one POST")
	fs.DurationVar(&f.linger, "webhook-linger", webhook.DefaultLinger, "webhook sink: longest a reading waits for others to fill its POST")
	fs.DurationVar(&f.retryFor, "webhook-retry-for", webhook.DefaultRetryFor, "webhook sink: retry a batch (network errors, 5xx, 429) this long, then redeliver it later")
	registerTLS(fs, &f.tls, "webhook", "PEM CA bundle that signs the endpoint's certificate (system roots otherwise)", "PEM client certificate for the endpoint (mutual TLS)")
}

// webhookAuthEnv holds the webhook's auth header value when no file is named.
const webhookAuthEnv = "MEDPIPE_WEBHOOK_AUTH"

func (f *webhookFlags) sink(log *slog.Logger, reg prometheus.Registerer) (sink.Sink, error) {
	if f.url == "" {
		return nil, errors.New("--sink webhook needs --webhook-url")
	}
	auth, err := secrets.Read("webhook-auth-file", f.authFile, webhookAuthEnv)
	if err != nil {
		return nil, err
	}
	tlsConfig, err := f.tls.ClientConfig()
	if err != nil {
		return nil, err
	}
	return webhook.New(webhook.Options{URL: f.url, AuthHeader: f.authHeader, AuthValue: auth, TLS: tlsConfig, BatchSize: f.batch, Linger: f.linger, RetryFor: f.retryFor, Log: log, Metrics: reg})
}

func (f *publishFlags) register(fs *flag.FlagSet, defaultMQTT string) {
	fs.StringVar(&f.sink, "sink", "mqtt", "where readings go: mqtt (the dashboards' topics) or webhook (HTTP POST of JSON batches, see --webhook-*)")
	f.webhook.register(fs)
	fs.StringVar(&f.mqtt, "mqtt", defaultMQTT, "MQTT broker URL: tcp://host:port or ssl://host:port")
	fs.StringVar(&f.user, "mqtt-user", "", "MQTT username (password from --mqtt-password-file or "+mqttPasswordEnv+")")
	fs.StringVar(&f.passwordFile, "mqtt-password-file", "", "file holding the MQTT password")
	registerTLS(fs, &f.tls, "mqtt", "PEM CA bundle that signs the broker's certificate (for ssl:// URLs; system roots otherwise)", "PEM client certificate for the broker (mutual TLS)")
	fs.StringVar(&f.clientID, "mqtt-client-id", "", "MQTT client id (default: medpipe-publish-<random>)")
	fs.StringVar(&f.prefix, "prefix", publish.DefaultPrefix, "first level of every MQTT topic")
	fs.IntVar(&f.qos, "qos", publish.DefaultQoS, "MQTT QoS of published messages: 0, 1 or 2")
	fs.BoolVar(&f.retain, "retain", false, "publish with the retained flag")
	fs.BoolVar(&f.jsonTopic, "json-topic", false, "also publish each reading as one JSON message on <prefix>/<id>/reading")
	fs.BoolVar(&f.jsonOnly, "json-only", false, "publish each reading only as the JSON message on <prefix>/<id>/reading (1 MQTT message per reading instead of 7+)")
	fs.IntVar(&f.addressEvery, "address-every", publish.DefaultAddressEvery, "publish a device's addresses on its first reading and every this many")
	fs.IntVar(&f.maxInFlight, "publish-in-flight", publish.DefaultMaxInFlight, "readings in flight to the sink per partition")
}

// mqttSinkOptions are the MQTT sink's options these flags describe;
// session: publish's persistent session (replay: a clean one).
func (f *publishFlags) mqttSinkOptions(session bool, log *slog.Logger, reg prometheus.Registerer) (publish.MQTTSinkOptions, error) {
	if f.qos < 0 || f.qos > 2 {
		return publish.MQTTSinkOptions{}, fmt.Errorf("--qos %d: want 0, 1 or 2", f.qos)
	}
	password, err := secrets.Read("mqtt-password-file", f.passwordFile, mqttPasswordEnv)
	if err != nil {
		return publish.MQTTSinkOptions{}, err
	}
	tlsConfig, err := f.tls.ClientConfig()
	if err != nil {
		return publish.MQTTSinkOptions{}, err
	}
	every := f.addressEvery
	if !session && every == 0 {
		every = -1 // replay: 0 has always meant never
	}
	return publish.MQTTSinkOptions{
		MQTT:   publish.MQTTOptions{URL: f.mqtt, ClientID: f.clientID, Username: f.user, Password: password, TLS: tlsConfig},
		Prefix: f.prefix, QoS: byte(f.qos), QoSSet: true, Retain: f.retain, JSONTopic: f.jsonTopic, JSONOnly: f.jsonOnly, AddressEvery: every,
		Session: session, Log: log, Metrics: reg,
	}, nil
}

// mqttPasswordEnv holds the MQTT password when no file is named.
const mqttPasswordEnv = "MEDPIPE_MQTT_PASSWORD"

func (f *publishFlags) options(parts int, log *slog.Logger, reg prometheus.Registerer) (_ publish.Options, err error) {
	defer func() { err = usageErr(err) }() // flag values that do not make options
	log = log.With("stage", "publish")
	o := publish.Options{Partitions: parts, MaxInFlight: f.maxInFlight, Log: log, Metrics: reg}
	switch f.sink {
	case "mqtt": // publish.New builds the sink: up fills in its own broker when --mqtt is empty
		var m publish.MQTTSinkOptions
		m, err = f.mqttSinkOptions(true, log, reg)
		o.MQTT, o.Prefix, o.QoS, o.QoSSet, o.Retain, o.JSONTopic, o.JSONOnly, o.AddressEvery = m.MQTT, m.Prefix, m.QoS, m.QoSSet, m.Retain, m.JSONTopic, m.JSONOnly, m.AddressEvery
	case "webhook":
		o.Sink, err = f.webhook.sink(log, reg)
	default:
		err = fmt.Errorf("--sink %q: want mqtt or webhook", f.sink)
	}
	return o, err
}

// destination is the sink's address for the start-up line (credentials redacted).
func (f *publishFlags) destination() string {
	if f.sink == "webhook" {
		return "webhook " + bus.RedactURLs(f.webhook.url)
	}
	return "mqtt " + bus.RedactURLs(f.mqtt)
}

// The ops endpoints of the separate stages, one port each so that they can
// share a machine (medpipe healthcheck asks ingest's unless told otherwise).
const (
	ingestHTTP  = ":9101"
	decryptHTTP = ":9102"
	publishHTTP = ":9103"
)

// stageFlags are the flags every separate stage has: the ops endpoint, logs
// and its NATS connection as its role.
type stageFlags struct {
	common commonFlags
	nf     natsFlags
}

func (s *stageFlags) register(fs *flag.FlagSet, http string, role bus.Role) {
	s.common.register(fs, http)
	s.nf.register(fs)
	s.nf.role = role
}

// process parses args and starts the stage bootstrap; the caller closes it.
func (s *stageFlags) process(fs *flag.FlagSet, args []string, stderr io.Writer) (*stage.Process, error) {
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	return s.common.process(stderr)
}

// connect connects p as the stage's role and verifies the streams.
func (s *stageFlags) connect(ctx context.Context, p *stage.Process, name string) (*nats.Conn, jetstream.JetStream, int, error) {
	return p.ConnectStreams(ctx, s.nf.conn(name, p.Log()), s.nf.givenStreams())
}

func runIngest(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("ingest", "The TCP edge: frames legacy device streams and stores them, still encrypted, in JetStream RAW.", stderr)
	var sf stageFlags
	var inf ingestFlags
	sf.register(fs, ingestHTTP, bus.RoleIngest)
	inf.register(fs, 1)
	p, err := sf.process(fs, args, stderr)
	if err != nil {
		return err
	}
	defer p.Close()
	nc, js, parts, err := sf.connect(ctx, p, "medpipe-ingest")
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
	var sf stageFlags
	var df decryptFlags
	sf.register(fs, decryptHTTP, bus.RoleDecrypt)
	df.register(fs, 1)
	p, err := sf.process(fs, args, stderr)
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
	nc, js, parts, err := sf.connect(ctx, p, "medpipe-decrypt")
	if err != nil {
		return err
	}
	opts := df.options(devs, parts, p.Log(), p.Metrics())
	keySource := "file " + df.keys
	rctx, cancel := context.WithTimeout(ctx, stage.SetupTimeout)
	defer cancel()
	replicas := sf.nf.streams.Replicas
	if df.keys == "" {
		if opts.Registry, err = registry.Bind(rctx, js, replicas); err != nil {
			return err
		}
		keySource = "registry " + registry.Bucket
	}
	if opts.Conns, err = bus.OpenConnStore(rctx, js, replicas); err != nil {
		return err
	}
	if opts.Seqs, err = bus.OpenSeqStore(rctx, js, replicas); err != nil {
		return err
	}
	w, err := decrypt.New(js, opts)
	if err != nil {
		return err
	}
	p.Add("decrypt", w, w.Health)
	p.WatchLag(js, bus.StreamRaw, bus.StageDecrypt, parts)
	return p.Run(ctx, "medpipe decrypt started", "nats", nc.ConnectedUrlRedacted(), "keys", keySource, "partitions", parts)
}

func runPublish(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("publish", "The MQTT bridge: republishes READINGS into the MQTT topics dashboards subscribe to.", stderr)
	var sf stageFlags
	var pf publishFlags
	sf.register(fs, publishHTTP, bus.RolePublish)
	pf.register(fs, publish.DefaultMQTTURL)
	p, err := sf.process(fs, args, stderr)
	if err != nil {
		return err
	}
	defer p.Close()
	nc, js, parts, err := sf.connect(ctx, p, "medpipe-publish")
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
	p.WatchLag(js, bus.StreamReadings, bus.StagePublish, parts)
	p.Check("mqtt", b.Health)
	return p.Run(ctx, "medpipe publish started", "nats", nc.ConnectedUrlRedacted(), "sink", pf.destination(), "prefix", pf.prefix, "qos", pf.qos, "partitions", parts)
}
