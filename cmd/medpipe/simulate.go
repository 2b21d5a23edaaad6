package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/medpipe/medpipe/ingest"
	"github.com/medpipe/medpipe/ops"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/stage"
	"github.com/medpipe/medpipe/wire"
)

func runSimulate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("simulate", "Simulated devices: each its own TCP connection, key and protocol, sending encrypted readings.\nEvery reading carries its device sequence number (see simulator.EncodeSeq) so loss and order can be counted.", stderr)
	var (
		common      commonFlags
		server      string
		keys        string
		keysOut     string
		devices     int
		variant     string
		protocol    string
		mix         string
		rate        float64
		duration    time.Duration
		count       int
		ramp        time.Duration
		seed        int64
		interactive bool
		id          string
		jsonOut     bool
		statusEvery time.Duration
		fever       float64
		missing     string
	)
	common.register(fs, "")
	fs.StringVar(&server, "server", stage.LoopbackAddr(ingest.DefaultListen), "ingest edge address host:port")
	fs.StringVar(&keys, "keys", "", "keys file of the fleet; created with --devices new devices when missing (give the same file to decrypt or keys import)")
	fs.StringVar(&keysOut, "keys-out", "", "generate a new fleet of --devices devices and write its keys file here (mode 0600; must not exist)")
	fs.IntVar(&devices, "devices", 10, "number of devices")
	fs.StringVar(&variant, "variant", simulator.DefaultVariant, "legacy variant: pico, pseudo or mixed")
	fs.StringVar(&protocol, "protocol", simulator.DefaultProtocol, "protocol: legacy, v2 or mixed (every third device v2)")
	fs.StringVar(&mix, "mix", "", "shares of device kinds, e.g. pico=40,pseudo=10,v2=50 (overrides --protocol and --variant)")
	fs.Float64Var(&rate, "rate", simulator.DefaultRate, "readings per second per device")
	fs.DurationVar(&duration, "duration", 0, "stop after this long (0: until interrupted)")
	fs.IntVar(&count, "count", 0, "stop each device after this many readings (0: no limit)")
	fs.DurationVar(&ramp, "ramp", 0, "spread connection starts over this long (0: the simulator's default)")
	fs.Int64Var(&seed, "seed", 1, "seed of the simulated signals")
	fs.BoolVar(&interactive, "interactive", false, "one device driven from the numbered menu (needs --id and --keys)")
	fs.StringVar(&id, "id", "", "the interactive device's id in --keys")
	fs.BoolVar(&jsonOut, "json", false, "print the summary at exit as JSON")
	fs.Float64Var(&fever, "fever-per-hour", 0, "each device's chance per hour of a fever episode (+1.5-2.5 °C for about three hours)")
	fs.StringVar(&missing, "missing-sensor", "", "v2 devices report these sensors missing and send their values absent, comma-separated: temperature, mcu, pulse, motion")
	fs.DurationVar(&statusEvery, "status-every", stage.DefaultStatusEvery, "progress line interval (0: off)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := common.log.logger(stderr)
	if err != nil {
		return err
	}
	devs, err := simulatedFleet(keys, keysOut, devices, interactive, id)
	if err != nil {
		return err
	}
	var m simulator.Mix
	if mix != "" {
		if m, err = simulator.ParseMix(mix); err != nil {
			return fmt.Errorf("--mix: %w", err)
		}
	}
	sims := make([]simulator.Device, len(devs))
	for i, d := range devs {
		if mix != "" {
			sims[i] = m.Assign(d, i, len(devs))
			continue
		}
		if sims[i], err = simulator.Assign(d, i, protocol, variant); err != nil {
			return fmt.Errorf("--protocol/--variant: %w", err)
		}
	}
	// v2 devices' boot epoch: above the one recorded next to the keys file.
	epoch, err := simulator.BootEpoch(simulator.EpochFile(cmp.Or(keys, keysOut)))
	if err != nil {
		return err
	}
	opts := simulator.Options{Server: server, Devices: sims, Rate: rate, Duration: duration, Count: count, Ramp: ramp, Seed: seed, FeverPerHour: fever, Log: log, Epoch: epoch}
	if opts.Sensors, err = missingSensors(missing); err != nil {
		return fmt.Errorf("--missing-sensor: %w", err)
	}
	var menu *simulator.Interactive
	if interactive {
		menu = simulator.NewInteractive()
		opts.Adjust = menu.Adjust
	}
	fleet, err := simulator.NewFleet(opts)
	if err != nil {
		return err
	}
	reg := ops.NewRegistry()
	reg.MustRegister(buildInfo().Collector())
	if err := fleet.RegisterMetrics(reg); err != nil {
		return err
	}
	srv, err := common.ops(reg, log, ops.Check{Name: "devices", Check: fleet.Health})
	if err != nil {
		return err
	}
	go srv.Serve(ctx)
	log.Info("medpipe simulate started", "server", server, "devices", len(sims), "rate", rate, "protocol", protocol, "mix", mix, "keys", keys+keysOut, "http", srv.Addr())
	start := time.Now()
	if interactive {
		err = menu.Run(ctx, fleet, os.Stdin, stdout)
	} else {
		if statusEvery > 0 {
			go simulateStatus(ctx, log, fleet, statusEvery)
		}
		err = fleet.Run(ctx)
	}
	st := fleet.Stats()
	secs := time.Since(start).Seconds()
	if jsonOut {
		b, _ := json.Marshal(map[string]any{"devices": st.Devices, "sent": st.Sent, "acked": st.Acked, "dropped": st.Dropped, "reconnects": st.Reconnects, "errors": st.Errors, "seconds": secs})
		fmt.Fprintln(stdout, string(b))
	} else {
		fmt.Fprintf(stdout, "%d devices sent %d readings in %.1f s (%.0f/s); v2 acknowledged %d, dropped %d; %d reconnects, %d errors\n",
			st.Devices, st.Sent, secs, float64(st.Sent)/secs, st.Acked, st.Dropped, st.Reconnects, st.Errors)
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// simulatedFleet returns the devices to simulate: from --keys (created when
// missing), freshly generated into --keys-out, or the one --id for --interactive.
func simulatedFleet(keys, keysOut string, n int, interactive bool, id string) ([]wire.Device, error) {
	switch {
	case keysOut != "" && keys != "":
		return nil, errors.New("give --keys or --keys-out, not both")
	case keysOut != "":
		if _, err := os.Stat(keysOut); err == nil {
			return nil, fmt.Errorf("--keys-out %s exists; choose a new file", keysOut)
		}
		return simulator.LoadOrCreateKeys(keysOut, n, "sim")
	case keys == "":
		return nil, errors.New("--keys or --keys-out is required")
	case interactive:
		f, err := os.Open(keys)
		if err != nil {
			return nil, fmt.Errorf("--keys: %w", err)
		}
		defer f.Close()
		all, err := wire.ReadKeys(f)
		if err != nil {
			return nil, err
		}
		for _, d := range all {
			if d.ID == id {
				return []wire.Device{d}, nil
			}
		}
		return nil, fmt.Errorf("--id %q is not in %s", id, keys)
	}
	return simulator.LoadOrCreateKeys(keys, n, "sim")
}

// simulateStatus logs the fleet's progress every interval.
func simulateStatus(ctx context.Context, log *slog.Logger, f *simulator.Fleet, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var prev uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			st := f.Stats()
			log.Info("status", "connected", st.Connected, "sent_per_s", float64(st.Sent-prev)/every.Seconds(), "sent", st.Sent, "acked", st.Acked, "reconnects", st.Reconnects, "errors", st.Errors)
			prev = st.Sent
		}
	}
}

// missingSensors parses --missing-sensor: sensor names, each reported missing.
func missingSensors(list string) (wire.SensorStates, error) {
	var st wire.SensorStates
	for name := range strings.SplitSeq(list, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		s, ok := wire.SensorByName(name)
		if !ok {
			return st, fmt.Errorf("unknown sensor %q (want temperature, mcu, pulse or motion)", name)
		}
		st[s] = wire.SensorMissing
	}
	return st, nil
}
