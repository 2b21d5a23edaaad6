package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/ingest"
	"github.com/medpipe/medpipe/publish"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/stage"
	"github.com/medpipe/medpipe/wire"
)

// upPortFlags names the flag that moves each embedded listener.
var upPortFlags = map[string]string{"nats": "--nats-port", "mqtt": "--mqtt-port", "monitoring": "--monitor-port"}

func runUp(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("up", "The whole pipeline in one process: an embedded nats-server (JetStream, MQTT) plus ingest, decrypt and publish,\noptionally with simulated devices so data flows at once.", stderr)
	var (
		common                      commonFlags
		nf                          natsFlags
		inf                         ingestFlags
		df                          decryptFlags
		pf                          publishFlags
		dataDir, host               string
		natsPort, mqttPort, monPort int
		simulate                    int
		rate                        float64
		variant, protocol           string
		statusEvery                 time.Duration
	)
	common.register(fs, "127.0.0.1:9100")
	fs.StringVar(&dataDir, "data-dir", defaultDataDir, "JetStream store (encrypted at rest), the generated NATS/MQTT credentials of every role, the store's key and simulator keys")
	fs.StringVar(&host, "host", "127.0.0.1", "address the embedded NATS, MQTT and monitoring listeners bind to (0.0.0.0 for other machines)")
	fs.IntVar(&natsPort, "nats-port", 4222, "embedded NATS client port")
	fs.IntVar(&mqttPort, "mqtt-port", 1883, "embedded MQTT port (MQTT 3.1.1)")
	fs.IntVar(&monPort, "monitor-port", 8222, "embedded nats-server monitoring port (-2: off)")
	nf.registerStreams(fs)
	inf.register(fs)
	df.register(fs)
	fs.Lookup("keys").Usage = "device keys file (JSON lines) that seeds the device registry in JetStream KV at start; devices already there keep their keys, rotations and revocations (medpipe keys works live against up)"
	pf.register(fs, "")
	fs.IntVar(&simulate, "simulate", 0, "start this many simulated legacy devices in the process (keys kept in the data dir)")
	fs.Float64Var(&rate, "rate", 20, "readings per second of each simulated device")
	fs.StringVar(&variant, "variant", "mixed", "legacy variant of simulated devices: pico, pseudo or mixed")
	fs.StringVar(&protocol, "protocol", "mixed", "protocol of simulated devices: legacy, v2 or mixed (every third device v2)")
	fs.DurationVar(&statusEvery, "status-every", 5*time.Second, "status line interval (0: off)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	p, err := common.process(stderr)
	if err != nil {
		return err
	}
	defer p.Close()
	log := p.Log()

	devs, sims, err := upDevices(df.keys, dataDir, simulate, protocol, variant, log)
	if err != nil {
		return err
	}

	creds, jsKey, err := upSecrets(dataDir)
	if err != nil {
		return err
	}
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{
		Host: host, Port: natsPort, MQTTPort: mqttPort, HTTPPort: monPort,
		StoreDir: filepath.Join(dataDir, "jetstream"), Credentials: creds, TopicPrefix: pf.prefix, JetStreamKey: jsKey,
	})
	var pe *bus.PortError
	if errors.As(err, &pe) {
		return fmt.Errorf("%w: another process has it; change %s", err, upPortFlags[pe.Listener])
	}
	if err != nil {
		return err
	}
	defer e.Shutdown()
	defer p.Close() // before the server shuts down

	// The admin creates the streams, consumers and buckets and applies the
	// limits given as flags (never the defaults over an operator's); then
	// its connection closes: up's stages need no admin rights.
	userOpts := func(role bus.Role) []nats.Option {
		return append(bus.UserOptions(string(role), creds[role]), nats.InProcessServer(e.Server))
	}
	ncAdmin, jsAdmin, err := bus.Connect(ctx, bus.ConnectOptions{Name: "medpipe-up-admin", Log: log, Options: userOpts(bus.RoleAdmin)})
	if err != nil {
		return err
	}
	defer ncAdmin.Close()
	parts, err := stage.ApplyStreams(ctx, jsAdmin, nf.givenStreams())
	if err != nil {
		return err
	}
	// The registry is the one source of keys, as for separate stages: the
	// keys file and simulated devices seed it (as admin, audited), and
	// `medpipe keys` changes it while up runs.
	sctx, cancel := context.WithTimeout(ctx, stage.SetupTimeout)
	defer cancel()
	reg, err := registry.Open(sctx, jsAdmin, nf.streams.Replicas)
	if err != nil {
		return err
	}
	added, err := reg.Seed(sctx, devs)
	if err != nil {
		return fmt.Errorf("seed the device registry: %w", err)
	}
	known, err := reg.List(sctx)
	if err != nil {
		return err
	}
	ncAdmin.Close() // up's stages need no admin rights from here on
	// One connection and JetStream context per stage, each as its own role,
	// as when they run as separate processes: ingest's publishes must not
	// use up the window of pending publishes that decrypt needs, nor queue
	// ahead of its acks, and no stage may do another's work.
	connect := func(role bus.Role) (jetstream.JetStream, error) {
		_, js, err := p.Connect(ctx, bus.ConnectOptions{Name: "medpipe-up-" + string(role), Options: userOpts(role)})
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

	iopts, err := inf.options(parts, log, p.Metrics())
	if err != nil {
		return err
	}
	// The simulated devices all connect from loopback at once: one NAT of
	// --simulate devices, which the per-address bounds must let in together.
	if iopts.MaxPreFramePerIP > 0 { // negative: no bound, left so
		iopts.MaxPreFramePerIP = max(iopts.MaxPreFramePerIP, simulate)
	}
	iopts.AcceptBurstPerIP = max(iopts.AcceptBurstPerIP, simulate)
	edge, err := ingest.New(js, iopts)
	if err != nil {
		return fmt.Errorf("%w: change --listen or --tls-listen", err)
	}
	dopts := df.options(nil, parts, log, p.Metrics())
	if dopts.Registry, err = registry.Bind(sctx, jsDecrypt, nf.streams.Replicas); err != nil {
		return err
	}
	if dopts.Seqs, err = bus.OpenSeqStore(sctx, jsDecrypt, nf.streams.Replicas); err != nil {
		return err
	}
	worker, err := decrypt.New(jsDecrypt, dopts)
	if err != nil {
		return err
	}
	if pf.mqtt == "" {
		pf.mqtt = "tcp://" + stage.LoopbackAddr(e.MQTTAddr)
		pf.user, pf.password = string(bus.RolePublish), creds[bus.RolePublish]
	}
	popts, err := pf.options(parts, log, p.Metrics())
	if err != nil {
		return err
	}
	bridge, err := publish.New(jsPublish, popts)
	if err != nil {
		return err
	}
	p.Add("ingest", edge, edge.Health)
	p.Add("decrypt", worker, worker.Health)
	p.Add("publish", bridge, nil)
	p.WatchLag(jsDecrypt, bus.StreamRaw, bus.StageDecrypt, parts)
	p.WatchLag(jsPublish, bus.StreamReadings, bus.StagePublish, parts)
	p.Metrics().MustRegister(stage.NewServerCollector(e.Server))
	p.Check("mqtt", bridge.Health)
	if len(sims) > 0 {
		epoch, err := simulator.BootEpoch(epochFile(filepath.Join(dataDir, simulatedKeys)))
		if err != nil {
			return err
		}
		fleet, err := simulator.NewFleet(simulator.Options{Server: stage.LoopbackAddr(edge.Addr().String()), Devices: sims, Rate: rate, Epoch: epoch, Log: log.With("stage", "simulate")})
		if err != nil {
			return err
		}
		p.Add("simulate", fleet, nil)
	}
	if len(known) == 0 {
		log.Warn("no device keys: every frame will be dead-lettered; give --keys FILE or --simulate N, or run medpipe keys import")
	}
	if statusEvery > 0 {
		go stage.StatusLine(ctx, log, p.Metrics(), statusEvery)
	}
	err = p.Run(ctx, "medpipe up",
		"devices", edge.Addr().String(), "devices_tls", tlsAddr(edge), "nats", e.ClientURL(), "mqtt", e.MQTTAddr, "monitor", e.MonitorAddr,
		"publish_to", bus.RedactURLs(pf.mqtt), "data", dataDir, "credentials", filepath.Join(dataDir, bus.CredentialsDir), "keys", "registry "+registry.Bucket, "devices_known", len(known), "devices_added", len(added), "simulated", len(sims), "partitions", parts)
	log.Info("medpipe up stopped", "err", err)
	return err
}

// simulatedKeys is the keys file of up's simulated devices, in the data dir.
const simulatedKeys = "simulated-keys.jsonl"

// upSecrets loads or, on first start, generates the password of every role
// (dashboards log in to MQTT as "dashboard") and the JetStream encryption
// key, in the data directory (0700, files 0600).
func upSecrets(dataDir string) (bus.Credentials, string, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("--data-dir: %w", err)
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

// upDevices returns the keys decrypt uses (the keys file's plus simulated
// ones) and the simulated devices.
func upDevices(keysFile, dataDir string, n int, protocol, variant string, log *slog.Logger) ([]wire.Device, []simulator.Device, error) {
	var devs []wire.Device
	if keysFile != "" {
		var err error
		if devs, err = decrypt.ReadKeysFile(keysFile, log); err != nil {
			return nil, nil, err
		}
	}
	if n <= 0 {
		return devs, nil, nil
	}
	simKeys, err := simulator.LoadOrCreateKeys(filepath.Join(dataDir, simulatedKeys), n, "sim")
	if err != nil {
		return nil, nil, fmt.Errorf("simulated device keys: %w", err)
	}
	known := map[string]bool{}
	for _, d := range devs {
		known[d.ID] = true
	}
	sims := make([]simulator.Device, len(simKeys))
	for i, d := range simKeys {
		sd, err := simulator.Assign(d, i, protocol, variant)
		if err != nil {
			return nil, nil, fmt.Errorf("--protocol/--variant: %w", err)
		}
		sims[i] = sd
		if !known[d.ID] {
			devs = append(devs, d)
		}
	}
	return devs, sims, nil
}
