package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/ops"
	"github.com/medpipe/medpipe/simulator"
)

// Scenarios.
const (
	ScenarioLive  = "live"  // devices send while the stack runs (the default)
	ScenarioDrain = "drain" // decrypt and publish drain a pre-filled RAW into Mosquitto
)

// Drain is the drain scenario's result: decrypt and publish, as processes,
// turning a RAW stream filled beforehand into readings on an MQTT broker,
// the leg a generic stream processor also does (issue 20's peer).
type Drain struct {
	Frames int `json:"frames"`
	// Seconds from starting decrypt and publish to the last reading on
	// the broker; PerSec is Frames over it.
	Seconds float64 `json:"seconds"`
	PerSec  float64 `json:"readings_per_s"`
	// PublishedSeconds is from the start to publish handing the last
	// reading to the broker (its counter; the broker's acks may still be
	// in flight), PublishedPerSec Frames over it: the pipeline's own rate,
	// whatever the subscriber's.
	PublishedSeconds float64 `json:"published_seconds"`
	PublishedPerSec  float64 `json:"published_readings_per_s"`
	// Usage is each process's CPU over the drain; CPUPer1000 is theirs,
	// the bench's subscriber left out, per 1,000 readings, and
	// MicrosPerReading the same per process.
	Usage            []ProcUsage        `json:"usage"`
	CPUPer1000       float64            `json:"cpu_s_per_1000"`
	MicrosPerReading map[string]float64 `json:"cpu_us_per_reading"`
	Broker           string             `json:"broker"`
}

// runDrain fills RAW with o.Frames legacy frames through the real edge (the
// fleet, legacy devices only), stops the edge, then starts decrypt and
// publish against the same nats-server and times them until the broker has
// delivered every reading to the bench's subscriber (QoS o.QoS, JSON
// layout: one MQTT message per reading).
func runDrain(ctx context.Context, o Options) (Result, error) {
	res := Result{Mode: ScenarioDrain, Devices: o.Devices, Rate: o.Rate, Layout: LayoutJSON, QoS: o.QoS}
	dir, err := os.MkdirTemp("", "medpipe-bench-drain-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	if o.Out != "" {
		defer keepLogs(dir, filepath.Join(o.Out, "logs"))
	}
	o.Mix = "pico=80,pseudo=20"
	o.Layout = LayoutJSON
	devs, keys, err := fleetKeys(o, dir)
	if err != nil {
		return res, err
	}
	per := max(1, o.Frames/o.Devices)
	total := per * o.Devices

	s := &stack{}
	defer s.stop()
	// nats-server in a process of its own, so its CPU time is its own.
	if err := s.startNATS(ctx, o, dir, false); err != nil {
		return res, err
	}
	broker := o.MQTT
	res.Drain = &Drain{Frames: total, Broker: "external " + bus.RedactURLs(broker)}
	if broker == "" {
		if broker, err = s.startMosquitto(ctx, dir); err != nil {
			return res, err
		}
		res.Drain.Broker = "Mosquitto (max_queued_messages 1000000)"
	}
	s.mqttURL = broker
	if s.edge, err = freeAddr(); err != nil {
		return res, err
	}
	env := []string{"MEDPIPE_NATS=" + s.natsURL}
	ingest, err := s.start(ctx, o, dir, "ingest", env, append([]string{"ingest", "--listen", s.edge}, oneAddressFleet...)...)
	if err != nil {
		return res, err
	}
	ids := make([]string, len(devs))
	for i, d := range devs {
		ids[i] = d.ID
	}
	ledger := NewLedger(ids)
	fleet, err := simulator.NewFleet(simulator.Options{Server: s.edge, Devices: devs, Rate: o.Rate, Ramp: o.Ramp,
		Count: per, OnSend: ledger.Sent, Log: o.Log.With("part", "simulator")})
	if err != nil {
		return res, err
	}
	o.Log.Info("drain: filling RAW", "frames", total, "devices", o.Devices)
	if err := fleet.Run(ctx); err != nil {
		return res, fmt.Errorf("bench: drain: fill: %w", err)
	}
	if err := waitRaw(ctx, s.natsURL, total); err != nil {
		return res, err
	}
	s.stopOne(ingest)

	sub, err := subscribe(broker, byte(o.QoS), ledger)
	if err != nil {
		return res, err
	}
	defer sub.Disconnect(250)
	started := time.Now()
	ledger.Open(started)
	before := s.usages()
	for _, st := range []struct {
		name string
		args []string
	}{
		{"decrypt", decryptArgs(keys)},
		{"publish", append([]string{"publish", "--mqtt", broker}, publishArgs(o)...)},
	} {
		if _, err := s.start(ctx, o, dir, st.name, env, st.args...); err != nil {
			return res, err
		}
	}
	profiled := make(chan error, 1)
	if o.Profile != "" {
		go func() { profiled <- s.profile(ctx, o.Profile, 10*time.Second) }()
	} else {
		profiled <- nil
	}
	// Progress, not a time bound: the drain goes on while readings arrive.
	last, lastAt := 0, time.Now()
	var published time.Time
	for {
		if published.IsZero() && s.counters()["medpipe_publish_readings_total"] >= float64(total) {
			published = time.Now()
		}
		t := ledger.Totals()
		if t.Lost == 0 {
			break
		}
		if got := int(t.Delivered); got > last {
			last, lastAt = got, time.Now()
		} else if time.Since(lastAt) > o.Drain {
			o.Log.Warn("drain: no reading for the drain bound; stopping", "delivered", got, "of", total)
			break
		}
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "\rdrained %d/%d   ", t.Delivered, total)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return res, err
		}
	}
	end := ledger.LastDelivery()
	if published.IsZero() && ledger.Totals().Lost == 0 {
		// The subscriber can see the last reading before publish counts it
		// (the counter moves on the broker's ack). The broker had every
		// reading by the last delivery, so that bounds the hand-over, once
		// the counter confirms publish saw them all.
		if err := waitCounter(ctx, s, "medpipe_publish_readings_total", float64(total), o.Drain); err != nil {
			o.Log.Warn("drain: publish's counter did not reach the total", "err", err)
		} else {
			published = end
		}
	}
	after := s.usages()
	if err := <-profiled; err != nil {
		o.Log.Warn("profiles not saved", "err", err)
	}
	_ = sleep(ctx, 500*time.Millisecond) // duplicates would come now
	res.Totals = ledger.Totals()
	d := res.Drain
	d.Seconds = end.Sub(started).Seconds()
	if !published.IsZero() {
		d.PublishedSeconds = published.Sub(started).Seconds()
		d.PublishedPerSec = float64(total) / d.PublishedSeconds
	}
	if d.Seconds > 0 {
		d.PerSec = float64(res.Totals.Delivered) / d.Seconds
	}
	d.MicrosPerReading = map[string]float64{}
	var cpu float64
	for _, u := range usageSince(before, after) {
		d.Usage = append(d.Usage, u)
		if u.Name == "ingest" || u.Name == selfUsageName(s) {
			continue
		}
		cpu += u.CPUSeconds
		if res.Totals.Delivered > 0 {
			d.MicrosPerReading[u.Name] = 1e6 * u.CPUSeconds / float64(res.Totals.Delivered)
		}
	}
	if res.Totals.Delivered > 0 {
		d.CPUPer1000 = 1000 * cpu / float64(res.Totals.Delivered)
	}
	res.Delivered, res.Seconds, res.Usage = d.PerSec, d.Seconds, d.Usage
	return res, nil
}

// waitCounter polls the stages' counters until name reaches want or
// bound passes.
func waitCounter(ctx context.Context, s *stack, name string, want float64, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for {
		got := s.counters()[name]
		if got >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: %s is %.0f after %v, want %.0f", name, got, bound, want)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitRaw waits until RAW holds n frames, as long as the count grows.
func waitRaw(ctx context.Context, url string, n int) error {
	nc, js, err := bus.Connect(ctx, bus.ConnectOptions{URLs: url, Name: "medpipe-bench-drain"})
	if err != nil {
		return err
	}
	defer nc.Close()
	var last uint64
	lastAt := time.Now()
	for {
		var have uint64
		if s, err := js.Stream(ctx, bus.StreamRaw); err == nil {
			if info, err := s.Info(ctx); err == nil {
				have = info.State.Msgs
			}
		}
		if have >= uint64(n) {
			return nil
		}
		if have > last {
			last, lastAt = have, time.Now()
		} else if time.Since(lastAt) > time.Minute {
			return fmt.Errorf("bench: drain: RAW holds %d of %d frames and grows no more", have, n)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// ServeNATS runs only a nats-server with JetStream on port and MQTT on
// mqttPort (-2: none), storing into dir, with /healthz and the profiler on
// httpAddr, until ctx ends: the server of the process and drain modes, a
// process of its own so that its CPU time is counted apart from the
// bench's simulator and subscriber. A node with a ClusterPort is one of
// the cluster's (Options.Cluster).
func ServeNATS(ctx context.Context, dir string, port, mqttPort int, httpAddr string, node Node) error {
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: port, MQTTPort: mqttPort, HTTPPort: -2, StoreDir: dir,
		ServerName: node.Name, ClusterName: clusterName, ClusterPort: node.ClusterPort, Routes: node.Routes})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	h, err := ops.Listen(ops.Options{Addr: httpAddr, Pprof: true, Gatherer: ops.NewRegistry()})
	if err != nil {
		return err
	}
	h.Serve(ctx)
	return nil
}

// Node is a cluster node's part of ServeNATS: its name, route port and the
// routes of every node. The zero Node is a server on its own.
type Node struct {
	Name        string
	ClusterPort int
	Routes      []string
}

// clusterName names the bench's JetStream cluster.
const clusterName = "medpipe-bench"
