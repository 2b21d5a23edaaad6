package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/ingest"
	"github.com/medpipe/medpipe/ops"
	"github.com/medpipe/medpipe/pipeline"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/stage"
)

// upPortFlags names the flag that moves each embedded listener.
var upPortFlags = map[string]string{"nats": "--nats-port", "mqtt": "--mqtt-port", "monitoring": "--monitor-port"}

func runUp(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("up", "The whole pipeline in one process: an embedded nats-server (JetStream, MQTT) plus ingest, decrypt and publish,\noptionally with simulated devices so data flows at once.", stderr)
	var (
		common commonFlags
		nf     natsFlags
		inf    ingestFlags
		df     decryptFlags
		pf     publishFlags
		o      pipeline.Options
	)
	common.register(fs, pipeline.DefaultHTTP)
	fs.StringVar(&o.DataDir, "data-dir", pipeline.DefaultDataDir, "JetStream store (encrypted at rest), the generated NATS/MQTT credentials of every role, the store's key and simulator keys")
	fs.StringVar(&o.Host, "host", bus.DefaultEmbeddedHost, "address the embedded NATS, MQTT and monitoring listeners bind to (0.0.0.0 for other machines)")
	fs.IntVar(&o.NATSPort, "nats-port", bus.DefaultNATSPort, "embedded NATS client port")
	fs.IntVar(&o.MQTTPort, "mqtt-port", bus.DefaultMQTTPort, "embedded MQTT port (MQTT 3.1.1)")
	fs.IntVar(&o.MonitorPort, "monitor-port", bus.DefaultMonitorPort, "embedded nats-server monitoring port (-2: off)")
	nf.registerStreams(fs)
	inf.register(fs, ingest.DefaultRawBatch)
	df.register(fs, decrypt.DefaultReadingsBatch)
	fs.Lookup("keys").Usage = "device keys file (JSON lines) that seeds the device registry in JetStream KV at start; devices already there keep their keys, rotations and revocations (medpipe keys works live against up)"
	pf.register(fs, "")
	fs.IntVar(&o.Simulate, "simulate", 0, "start this many simulated legacy devices in the process (keys kept in the data dir)")
	fs.Float64Var(&o.Rate, "rate", simulator.DefaultRate, "readings per second of each simulated device")
	fs.StringVar(&o.Variant, "variant", simulator.DefaultVariant, "legacy variant of simulated devices: pico, pseudo or mixed")
	fs.StringVar(&o.Protocol, "protocol", pipeline.DefaultProtocol, "protocol of simulated devices: legacy, v2 or mixed (every third device v2)")
	fs.DurationVar(&o.StatusEvery, "status-every", stage.DefaultStatusEvery, "status line interval (0: off)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := common.log.logger(stderr)
	if err != nil {
		return err
	}
	o.HTTP, o.Pprof, o.Log, o.Metrics, o.Streams, o.Build = common.http, common.pprof, log, ops.NewRegistry(), nf.givenStreams(), buildInfo()
	if df.keys != "" {
		if o.Keys, err = decrypt.ReadKeysFile(df.keys, log); err != nil {
			return err
		}
	}
	if o.Ingest, err = inf.options(0, log, nil); err != nil {
		return err
	}
	o.Decrypt = df.options(nil, 0, log, nil)
	if o.Publish, err = pf.options(0, log, o.Metrics); err != nil {
		return err
	}
	if pf.sink != "mqtt" {
		o.Destination = pf.destination()
	}
	p, err := pipeline.New(ctx, o)
	var pe *bus.PortError
	var ne *net.OpError
	switch {
	case errors.As(err, &pe):
		return fmt.Errorf("%w: another process has it; change %s", err, upPortFlags[pe.Listener])
	case errors.As(err, &ne) && ne.Op == "listen":
		return fmt.Errorf("%w: change --listen or --tls-listen", err)
	case err != nil:
		return err
	}
	return p.Run(ctx)
}
