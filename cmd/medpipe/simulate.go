package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"time"

	"github.com/medpipe/medpipe/simulator"
)

func runSimulate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("simulate", "Simulated legacy devices: each its own TCP connection, key and variant, sending encrypted readings.", stderr)
	var (
		lf       logFlags
		server   string
		keys     string
		devices  int
		variant  string
		protocol string
		rate     float64
		duration time.Duration
		count    int
		ramp     time.Duration
		seed     int64
	)
	lf.register(fs)
	fs.StringVar(&server, "server", "127.0.0.1:9998", "ingest edge address host:port")
	fs.StringVar(&keys, "keys", "", "keys file of the simulated fleet; created with --devices new devices when missing (give the same file to decrypt)")
	fs.IntVar(&devices, "devices", 10, "number of devices")
	fs.StringVar(&variant, "variant", "mixed", "legacy variant: pico, pseudo or mixed")
	fs.StringVar(&protocol, "protocol", "legacy", "protocol: legacy, v2 or mixed (every third device v2)")
	fs.Float64Var(&rate, "rate", 20, "readings per second per device")
	fs.DurationVar(&duration, "duration", 0, "stop after this long (0: until interrupted)")
	fs.IntVar(&count, "count", 0, "stop each device after this many readings (0: no limit)")
	fs.DurationVar(&ramp, "ramp", 0, "spread connection starts over this long (0: the simulator's default)")
	fs.Int64Var(&seed, "seed", 1, "seed of the simulated signals")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	if keys == "" {
		return errors.New("--keys is required: the fleet's keys file (created when missing)")
	}
	devs, err := simulator.LoadOrCreateKeys(keys, devices, "sim")
	if err != nil {
		return err
	}
	sims := make([]simulator.Device, len(devs))
	for i, d := range devs {
		sd, err := simulator.Assign(d, i, protocol, variant)
		if err != nil {
			return fmt.Errorf("--protocol/--variant: %w", err)
		}
		sims[i] = sd
	}
	fleet, err := simulator.NewFleet(simulator.Options{Server: server, Devices: sims, Rate: rate, Duration: duration, Count: count, Ramp: ramp, Seed: seed, Log: log})
	if err != nil {
		return err
	}
	log.Info("medpipe simulate started", "server", server, "devices", len(sims), "rate", rate, "protocol", protocol, "variant", variant, "keys", keys)
	start := time.Now()
	err = fleet.Run(ctx)
	st := fleet.Stats()
	summary := map[string]any{"devices": st.Devices, "sent": st.Sent, "acked": st.Acked, "dropped": st.Dropped, "reconnects": st.Reconnects, "errors": st.Errors, "seconds": time.Since(start).Seconds()}
	b, _ := json.Marshal(summary)
	fmt.Fprintln(stdout, string(b))
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// version is set at build time with -ldflags "-X main.version=…".
var version = ""

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer) error {
	v := version
	if v == "" {
		v = "(devel)"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					v = "devel-" + s.Value[:min(12, len(s.Value))]
				}
			}
		}
	}
	fmt.Fprintln(stdout, "medpipe", v)
	return nil
}
