//go:build bench

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/medpipe/medpipe/bench"
)

// benchLinked says whether `medpipe bench` is in this build.
const benchLinked = true

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", "Measure the whole pipeline: start the stack, drive simulated devices, account for every reading on MQTT\n(lost, duplicated, reordered), time each from the device's write to its MQTT arrival, and compare with the\nraw JetStream and MQTT rates of the same machine. Writes report.md, report.json and PNG plots to --out.", stderr)
	var (
		common   commonFlags
		o        bench.Options
		p99      time.Duration
		compare  string
		progress bool
	)
	common.log.register(fs)
	fs.StringVar(&o.Mode, "stages", bench.ModeEmbedded, "embedded (one `medpipe up` process), process (a process per stage) or external (stages against --nats and --mqtt)")
	fs.IntVar(&o.Cluster, "cluster", 0, "process mode: run this many nats-servers as one JetStream cluster (3: streams with 3 replicas), with Mosquitto as the broker")
	fs.StringVar(&o.NATS, "nats", "", "external mode: NATS URL(s)")
	fs.StringVar(&o.MQTT, "mqtt", "", "external mode: MQTT broker URL")
	fs.StringVar(&o.Broker, "broker", "", "embedded and process modes: the MQTT broker, stack (nats-server's MQTT listener) or mosquitto (started by the bench; the default with --cluster)")
	fs.IntVar(&o.Devices, "devices", bench.DefaultDevices, "simulated devices")
	fs.Float64Var(&o.Rate, "rate", bench.DefaultRate, "readings per second of each device (the first rate of a sweep)")
	fs.StringVar(&o.Mix, "mix", bench.DefaultMix, "share of device kinds: pico, pseudo, v2")
	fs.DurationVar(&o.Ramp, "ramp", 0, "spread the devices' connections over this long (default: 1 ms per device, at most 10 s)")
	fs.DurationVar(&o.Warmup, "warmup", bench.DefaultWarmup, "run this long before measuring")
	fs.DurationVar(&o.Duration, "duration", bench.DefaultDuration, "the measured window")
	fs.DurationVar(&o.Drain, "drain", bench.DefaultDrain, "after the devices stop, wait at most this long for the last readings")
	fs.StringVar(&o.Layout, "layout", bench.LayoutTopics, "MQTT layout: topics (the seven value topics) or json (one JSON message per reading)")
	fs.IntVar(&o.QoS, "qos", bench.DefaultQoS, "MQTT QoS: 0 or 1")
	fs.BoolVar(&o.Ceilings, "ceilings", true, "also measure raw JetStream and MQTT rates on the same servers")
	fs.BoolVar(&o.Sweep, "sweep", false, "raise the rate ×1.5 a step until p99 passes --p99 or a reading is lost")
	fs.DurationVar(&p99, "p99", bench.DefaultP99, "the sweep's latency bound")
	fs.StringVar(&o.Out, "out", "bench-results", "folder for report.md, report.json and the plots (empty: none)")
	fs.StringVar(&compare, "compare", "", "an earlier report.json to compare with")
	fs.StringVar(&o.Profile, "profile", "", "folder for CPU and allocation profiles of every stack process over the window (go tool pprof)")
	fs.BoolVar(&progress, "progress", isTerminal(os.Stderr), "print a progress line every second")
	fs.StringVar(&o.Scenario, "scenario", bench.ScenarioLive, "live (devices send while the stack runs) or drain (RAW filled with --frames legacy frames first, then decrypt and publish drain it into Mosquitto, or --mqtt)")
	fs.IntVar(&o.Frames, "frames", bench.DefaultFrames, "drain scenario: legacy frames stored in RAW before the stages start")
	var serveDir, serveHTTP string
	var servePort, serveMQTT int
	fs.StringVar(&serveDir, "serve-nats", "", "internal (the drain scenario's server): run only a nats-server with JetStream storing into this folder")
	fs.IntVar(&servePort, "serve-nats-port", 4222, "internal: --serve-nats's client port")
	fs.IntVar(&serveMQTT, "serve-mqtt-port", -2, "internal: --serve-nats's MQTT port (-2: none)")
	fs.StringVar(&serveHTTP, "http", "127.0.0.1:0", "internal: --serve-nats's /healthz and profiler address")
	var node bench.Node
	var routes string
	fs.StringVar(&node.Name, "serve-name", "", "internal: --serve-nats's server name (cluster nodes)")
	fs.IntVar(&node.ClusterPort, "serve-cluster-port", 0, "internal: --serve-nats's route port (0: not clustered)")
	fs.StringVar(&routes, "serve-routes", "", "internal: --serve-nats's routes, host:port of every node, comma-separated")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if serveDir != "" {
		if routes != "" {
			node.Routes = strings.Split(routes, ",")
		}
		return bench.ServeNATS(ctx, serveDir, servePort, serveMQTT, serveHTTP, node)
	}
	log, err := common.log.logger(stderr)
	if err != nil {
		return err
	}
	if o.Binary, err = os.Executable(); err != nil {
		return fmt.Errorf("bench: find the medpipe binary: %w", err)
	}
	o.P99, o.Log = p99, log
	if progress {
		o.Progress = stderr
	}
	var old *bench.Report
	if compare != "" {
		if old, err = bench.ReadReport(compare); err != nil {
			return err
		}
	}
	rep, err := bench.Run(ctx, o)
	if rep != nil && len(rep.Results) > 0 {
		var md strings.Builder
		rep.Markdown(&md)
		fmt.Fprint(stdout, md.String())
		if old != nil {
			fmt.Fprintln(stdout, "\nAgainst", compare+":")
			bench.Compare(stdout, old, rep)
		}
	}
	return err
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
