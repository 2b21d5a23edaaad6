package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/tidwall/gjson"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/mqttconn"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/wire"
)

// Layouts of the MQTT side.
const (
	LayoutTopics = "topics" // today's seven value topics (plus the JSON topic the bench counts from)
	LayoutJSON   = "json"   // one JSON message per reading
)

// Defaults of Options (and of `medpipe bench`'s flags).
const (
	DefaultDevices  = 1000
	DefaultRate     = 1.0 // readings per second of each device
	DefaultMix      = "pico=40,pseudo=10,v2=50"
	DefaultWarmup   = 5 * time.Second
	DefaultDuration = 30 * time.Second
	DefaultDrain    = 30 * time.Second
	DefaultQoS      = 1
	DefaultP99      = 100 * time.Millisecond
	DefaultFrames   = 200_000
	maxRamp         = 10 * time.Second
)

// Options configures a benchmark run. Zero values take the defaults given.
type Options struct {
	// Binary is the medpipe executable that runs the stack's processes.
	Binary string
	// Mode is ModeEmbedded (default), ModeProcess or ModeExternal.
	Mode string
	// Cluster, above 1 and with ModeProcess, runs that many nats-server
	// processes as one JetStream cluster (streams and buckets with as many
	// replicas), with Mosquitto as the MQTT broker.
	Cluster int
	// NATS and MQTT are the servers of ModeExternal.
	NATS, MQTT string
	// Broker is the MQTT broker of the embedded and process modes:
	// BrokerStack (default: nats-server's MQTT listener) or
	// BrokerMosquitto (a Mosquitto the bench starts, as with Cluster).
	Broker string
	// Devices (required; the flag's default is DefaultDevices), Rate
	// (readings/s each, DefaultRate), Mix of kinds (DefaultMix) and Ramp
	// (spread of connection starts, 1 ms per device, at most 10 s).
	Devices int
	Rate    float64
	Mix     string
	Ramp    time.Duration
	// Warmup runs before the measured window (DefaultWarmup); Duration is
	// the window (DefaultDuration); Drain bounds the wait for the last
	// readings after the devices stop (DefaultDrain).
	Warmup, Duration, Drain time.Duration
	// Layout is LayoutTopics (default) or LayoutJSON; QoS is 0 or 1 (the
	// zero value is QoS 0; the flag's default is DefaultQoS).
	Layout string
	QoS    int
	// Ceilings measures JetStream's and MQTT's raw rates after the run.
	Ceilings bool
	// Sweep raises the rate step by step (Rate, ×1.5, …) until p99 passes
	// P99 (DefaultP99) or a reading is lost, and reports the last rate
	// that held.
	Sweep bool
	P99   time.Duration
	// Out is the folder for report.md, report.json and the plots ("" skips
	// writing them).
	Out string
	// Profile, when set, is a folder for CPU (over the measured window) and
	// allocation profiles of every stack process (go tool pprof reads them).
	Profile string
	// Scenario is ScenarioLive (default) or ScenarioDrain: Frames legacy
	// frames (DefaultFrames) sent into RAW first, then drained by decrypt
	// and publish as processes into MQTT (MQTT, when set, or a Mosquitto
	// the bench starts), JSON layout.
	Scenario string
	Frames   int
	// Progress, when set, receives a progress line every second.
	Progress io.Writer
	// Log receives the run's events; nil discards them.
	Log *slog.Logger
}

func (o *Options) setDefaults() error {
	if o.Binary == "" {
		return errors.New("bench: Options.Binary (the medpipe executable) is required")
	}
	if o.Mode == "" {
		o.Mode = ModeEmbedded
	}
	switch {
	case o.Broker == "" && o.Cluster > 1:
		o.Broker = BrokerMosquitto
	case o.Broker == "":
		o.Broker = BrokerStack
	case o.Broker != BrokerStack && o.Broker != BrokerMosquitto:
		return fmt.Errorf("bench: broker %q: want %s or %s", o.Broker, BrokerStack, BrokerMosquitto)
	case o.Broker == BrokerStack && o.Cluster > 1:
		return errors.New("bench: a --cluster run uses Mosquitto as its broker")
	case o.Broker == BrokerMosquitto && o.Mode == ModeExternal:
		return errors.New("bench: external mode uses --mqtt as its broker")
	}
	if o.Cluster > 1 && (o.Mode != ModeProcess || o.Scenario == ScenarioDrain) {
		return errors.New("bench: --cluster needs --stages process and the live scenario")
	}
	if o.Scenario == "" {
		o.Scenario = ScenarioLive
	}
	if o.Scenario != ScenarioLive && o.Scenario != ScenarioDrain {
		return fmt.Errorf("bench: scenario %q: want live or drain", o.Scenario)
	}
	if o.Frames <= 0 {
		o.Frames = DefaultFrames
	}
	if o.Devices <= 0 {
		return errors.New("bench: Devices must be positive")
	}
	if o.Rate <= 0 {
		o.Rate = DefaultRate
	}
	if o.Mix == "" {
		o.Mix = DefaultMix
	}
	if o.Ramp <= 0 {
		o.Ramp = min(maxRamp, time.Duration(o.Devices)*time.Millisecond)
	}
	if o.Warmup <= 0 {
		o.Warmup = DefaultWarmup
	}
	if o.Duration <= 0 {
		o.Duration = DefaultDuration
	}
	if o.Drain <= 0 {
		o.Drain = DefaultDrain
	}
	if o.Layout == "" {
		o.Layout = LayoutTopics
	}
	if o.Layout != LayoutTopics && o.Layout != LayoutJSON {
		return fmt.Errorf("bench: layout %q: want topics or json", o.Layout)
	}
	if o.QoS < 0 || o.QoS > 1 {
		return fmt.Errorf("bench: qos %d: want 0 or 1", o.QoS)
	}
	if o.P99 <= 0 {
		o.P99 = DefaultP99
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// msgsPerReading is what one reading costs MQTT in the layout (address
// topics, every 50th reading, are left out).
func msgsPerReading(layout string) int {
	if layout == LayoutJSON {
		return 1
	}
	return 8 // seven value topics and the JSON topic the bench counts from
}

// Result is one scenario's figures.
type Result struct {
	Mode      string  `json:"mode"`
	Devices   int     `json:"devices"`
	Rate      float64 `json:"rate"`
	Layout    string  `json:"layout"`
	QoS       int     `json:"qos"`
	Offered   float64 `json:"offered_readings_per_s"`
	Seconds   float64 `json:"window_seconds"`
	Delivered float64 `json:"delivered_readings_per_s"`
	Totals    Totals  `json:"totals"`
	Latency   Latency `json:"latency"`
	// Stage throughput in the window, per second.
	FramesIn     float64 `json:"frames_in_per_s"`
	ReadingsOut  float64 `json:"readings_out_per_s"`
	MQTTMessages float64 `json:"mqtt_messages_per_s"`
	// RawBytesPerFrame is JetStream's stored bytes per RAW frame.
	RawBytesPerFrame float64     `json:"raw_bytes_per_frame"`
	Usage            []ProcUsage `json:"usage"`
	// WindowUsage is each process's CPU over the measured window only.
	WindowUsage  []ProcUsage `json:"window_usage,omitempty"`
	Ceilings     *Ceilings   `json:"ceilings,omitempty"`
	CeilingError string      `json:"ceiling_error,omitempty"`
	// Ratio is delivered readings/s over the bottleneck ceiling.
	Ratio float64 `json:"ratio_of_ceiling,omitempty"`
	// Drain is the drain scenario's figures.
	Drain  *Drain   `json:"drain,omitempty"`
	Series []Second `json:"series"`
	cdf    [][2]float64
}

// Held reports whether the run met the bound: nothing lost, p99 within it.
func (r Result) Held(p99 time.Duration) bool {
	return r.Totals.Lost == 0 && r.Latency.P99 <= float64(p99.Milliseconds())
}

// Report is a run: one result, or a sweep's steps.
type Report struct {
	Started time.Time `json:"started"`
	Machine string    `json:"machine"`
	Results []Result  `json:"results"`
	// MaxHeld is, for a sweep, the highest rate per device that held.
	MaxHeld float64 `json:"max_held_rate,omitempty"`
}

// Run runs the scenario (or the sweep) and writes the report into o.Out.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now().UTC(), Machine: machine()}
	rate := o.Rate
	for {
		step := o
		step.Rate = rate
		run := runOnce
		if o.Scenario == ScenarioDrain {
			run = runDrain
		}
		res, err := run(ctx, step)
		if err != nil {
			return rep, err
		}
		rep.Results = append(rep.Results, res)
		if !o.Sweep {
			break
		}
		if !res.Held(o.P99) {
			o.Log.Info("sweep: bound passed", "rate", rate, "p99_ms", res.Latency.P99, "lost", res.Totals.Lost)
			break
		}
		rep.MaxHeld = rate
		rate *= 1.5
	}
	if o.Out != "" {
		if err := rep.write(o.Out); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// runOnce runs one scenario on a fresh stack.
func runOnce(ctx context.Context, o Options) (Result, error) {
	mode := o.Mode
	if o.Cluster > 1 {
		mode = fmt.Sprintf("%s, %d-node cluster", o.Mode, o.Cluster)
	}
	if o.Broker == BrokerMosquitto {
		mode += ", Mosquitto"
	}
	res := Result{Mode: mode, Devices: o.Devices, Rate: o.Rate, Layout: o.Layout, QoS: o.QoS, Offered: float64(o.Devices) * o.Rate}
	dir, err := os.MkdirTemp("", "medpipe-bench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	if o.Out != "" {
		// The stack's logs go with the report: they say what a stage did
		// about a reading the ledger found late or missing.
		defer keepLogs(dir, filepath.Join(o.Out, "logs"))
	}
	devs, keys, err := fleetKeys(o, dir)
	if err != nil {
		return res, err
	}
	st, err := startStack(ctx, o, keys, dir)
	if st != nil {
		defer st.stop()
	}
	if err != nil {
		return res, err
	}
	// Ceilings first, on the quiet stack: measured after a saturated run,
	// they would be depressed by the backlog still draining.
	var ceilings *Ceilings
	if o.Ceilings {
		c, err := measureCeilings(ctx, st.natsURL, st.mqttURL, st.readURL(), byte(o.QoS), msgsPerReading(o.Layout))
		if err != nil {
			res.CeilingError = err.Error()
			o.Log.Warn("ceilings not measured", "err", err)
		} else {
			ceilings = &c
		}
	}
	ids := make([]string, len(devs))
	for i, d := range devs {
		ids[i] = d.ID
	}
	ledger := NewLedger(ids)
	sub, err := subscribe(st.readURL(), byte(o.QoS), ledger)
	if err != nil {
		return res, err
	}
	defer sub.Disconnect(250)

	// A count rather than a duration: at the end, v2 devices wait for the
	// edge to acknowledge what they sent, as a device that stops would.
	count := int(o.Rate * (o.Ramp + o.Warmup + o.Duration).Seconds())
	fleet, err := simulator.NewFleet(simulator.Options{Server: st.edge, Devices: devs, Rate: o.Rate, Ramp: o.Ramp,
		Count: max(count, 1), OnSend: ledger.Sent, Log: o.Log.With("part", "simulator")})
	if err != nil {
		return res, err
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(fctx) }()
	o.Log.Info("bench running", "mode", o.Mode, "devices", o.Devices, "rate", o.Rate, "layout", o.Layout, "qos", o.QoS, "edge", st.edge, "nats", bus.RedactURLs(st.natsURL), "mqtt", bus.RedactURLs(st.mqttURL))

	if err := progressUntil(ctx, o, ledger, fleet, time.Now().Add(o.Ramp+o.Warmup)); err != nil {
		return res, err
	}
	before, usedBefore, opened := st.counters(), st.usages(), time.Now()
	ledger.Open(opened)
	profiled := make(chan error, 1)
	if o.Profile != "" {
		go func() { profiled <- st.profile(ctx, o.Profile, o.Duration-time.Second) }()
	} else {
		profiled <- nil
	}
	if err := progressUntil(ctx, o, ledger, fleet, opened.Add(o.Duration)); err != nil {
		return res, err
	}
	if err := <-profiled; err != nil {
		o.Log.Warn("profiles not saved", "err", err)
	}
	after, closed := st.counters(), time.Now()
	ledger.Close()
	res.Seconds = closed.Sub(opened).Seconds()
	res.Usage = st.usages()
	res.WindowUsage = usageSince(usedBefore, res.Usage)
	rate := func(name string) float64 { return (after[name] - before[name]) / res.Seconds }
	res.FramesIn, res.ReadingsOut, res.MQTTMessages = rate("medpipe_ingest_frames_total"), rate("medpipe_decrypt_readings_total"), rate("medpipe_publish_mqtt_messages_total")

	// The devices end their counts; v2 devices then wait for their last
	// acknowledgements, which a saturated stack may never give: bounded.
	select {
	case err := <-fleetDone:
		if err != nil && !errors.Is(err, context.Canceled) {
			return res, fmt.Errorf("bench: simulator: %w", err)
		}
	case <-time.After(o.Drain):
		o.Log.Warn("devices still waiting for acknowledgements after the drain bound; stopping them")
		cancel()
		<-fleetDone
	}
	// Drain: wait until everything sent arrived, or the bound.
	deadline := time.Now().Add(o.Drain)
	for t := ledger.Totals(); t.Lost > 0 && time.Now().Before(deadline); t = ledger.Totals() {
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return res, err
		}
	}
	_ = sleep(ctx, 500*time.Millisecond) // duplicates would come now
	res.Totals, res.Latency, res.Series, res.cdf = ledger.Totals(), ledger.Latency(), ledger.Series(), ledger.CDF()
	res.Delivered = float64(res.Latency.Count) / res.Seconds
	res.RawBytesPerFrame = rawBytesPerFrame(ctx, st.natsURL, res.Totals.Sent)
	if ceilings != nil {
		res.Ceilings = ceilings
		res.Ratio = res.Delivered / ceilings.BottleneckPerSec
	}
	return res, nil
}

// fleetKeys makes the simulated devices and the keys file the stack reads.
func fleetKeys(o Options, dir string) ([]simulator.Device, string, error) {
	mix, err := simulator.ParseMix(o.Mix)
	if err != nil {
		return nil, "", err
	}
	path := filepath.Join(dir, "keys.jsonl")
	keys, err := simulator.LoadOrCreateKeys(path, o.Devices, "bench")
	if err != nil {
		return nil, "", err
	}
	devs := make([]simulator.Device, len(keys))
	for i, k := range keys {
		devs[i] = mix.Assign(k, i, len(keys))
	}
	return devs, path, nil
}

// subscribe accounts every reading arriving on the JSON topic.
// readingsTopic is the JSON topic of every device's readings, under the
// live prefix (a dashboard's login may read nothing above it).
const readingsTopic = bus.DefaultTopicPrefix + "/+/reading"

// subscribeError is a subscription's failure, the broker's refusal
// included: MQTT 3.1.1 refuses a filter in SUBACK (0x80), not as an error.
func subscribeError(t mqtt.Token, filter string) error {
	if err := t.Error(); err != nil {
		return err
	}
	if st, ok := t.(*mqtt.SubscribeToken); ok {
		if code, ok := st.Result()[filter]; ok && code == 0x80 {
			return fmt.Errorf("bench: the broker refused the subscription to %s", filter)
		}
	}
	return nil
}

// readingPaths are where the ledger's facts sit in a reading's JSON:
// device, seq, and the values that carry a legacy reading's number
// (simulator.SeqFields), named as bus.Reading's JSON names them.
var readingPaths = func() []string {
	r := reflect.TypeFor[bus.Reading]()
	name := func(field string) string {
		f, _ := r.FieldByName(field) // TestReadingFacts fails on a renamed field
		n, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		return n
	}
	paths := []string{name("Device"), name("Seq")}
	for _, f := range simulator.SeqFields() {
		paths = append(paths, name("Values")+"."+f.Name())
	}
	return paths
}()

// readingFacts returns a reading's device and the sequence number the
// ledger counts it by. gjson reads only up to the fields asked for:
// decoding the whole reading (a v2 one carries its pulse batch) cost the
// bench 16 % of its CPU, taken from the stack it measures.
func readingFacts(payload []byte) (device string, seq uint64, ok bool) {
	f := gjson.GetManyBytes(payload, readingPaths...)
	device, raw := f[0].String(), f[1].Uint()
	// v2 readings carry their frame's sequence number, whose low 32 bits
	// count the readings of the device's boot (one boot per bench run);
	// legacy ones carry the simulator's in their values' last digits
	// (modulo 10,000: runs stay below that per device).
	if raw != 0 {
		return device, uint64(wire.V2SeqCounter(raw)), device != ""
	}
	seq, ok = simulator.DecodeSeq([4]string{f[2].String(), f[3].String(), f[4].String(), f[5].String()})
	return device, seq, ok && device != ""
}

func subscribe(url string, qos byte, l *Ledger) (mqtt.Client, error) {
	handler := func(_ mqtt.Client, m mqtt.Message) {
		at := time.Now()
		if device, seq, ok := readingFacts(m.Payload()); ok {
			l.Delivered(device, seq, at)
		}
	}
	subscribed := make(chan error, 1)
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("medpipe-bench-subscriber").
		// In order: with OrderMatters(false) paho runs each handler on a
		// goroutine of its own, and the ledger counted readings that the
		// broker had delivered in order as reordered (1-16 per run).
		SetCleanSession(true).SetAutoReconnect(true).SetOrderMatters(true).
		// Buffered reads: paho's three reads a packet made the subscriber
		// a large share of the box's CPU, taken from the stack measured.
		SetCustomOpenConnectionFn(mqttconn.Open).
		// The broker drops QoS 1 messages for a subscriber that falls behind
		// its queue; a deep client channel keeps this one from being slow.
		SetMessageChannelDepth(1 << 16).
		SetOnConnectHandler(func(cl mqtt.Client) {
			t := cl.Subscribe(readingsTopic, qos, handler)
			go func() { t.Wait(); subscribed <- subscribeError(t, readingsTopic) }()
		}))
	if t := c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("bench: subscriber connect to %s: %v", bus.RedactURLs(url), t.Error())
	}
	select {
	case err := <-subscribed:
		if err != nil {
			return nil, fmt.Errorf("bench: subscribe: %w", err)
		}
	case <-time.After(10 * time.Second):
		return nil, errors.New("bench: no SUBACK within 10 s")
	}
	return c, nil
}

// progressUntil writes a progress line every second until t.
func progressUntil(ctx context.Context, o Options, l *Ledger, f *simulator.Fleet, t time.Time) error {
	for time.Now().Before(t) {
		if err := sleep(ctx, min(time.Second, time.Until(t))); err != nil {
			return err
		}
		if o.Progress != nil {
			tot, st := l.Totals(), f.Stats()
			lat := l.Latency()
			fmt.Fprintf(o.Progress, "\rconnected %d/%d  sent %d  delivered %d  in flight %d  p99 %.1f ms   ", st.Connected, st.Devices, tot.Sent, tot.Delivered, tot.Lost, lat.P99)
		}
	}
	if o.Progress != nil {
		fmt.Fprintln(o.Progress)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// rawBytesPerFrame is RAW's stored bytes over the frames the devices sent
// (a RAW message may hold several: bus.ProtocolBatch).
func rawBytesPerFrame(ctx context.Context, url string, frames uint64) float64 {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second) // a saturated server answers late
	defer cancel()
	nc, js, err := bus.Connect(ctx, bus.ConnectOptions{URLs: url, Name: "medpipe-bench-info"})
	if err != nil {
		return 0
	}
	defer nc.Close()
	s, err := js.Stream(ctx, bus.StreamRaw)
	if err != nil {
		return 0
	}
	info, err := s.Info(ctx)
	if err != nil || frames == 0 {
		return 0
	}
	return float64(info.State.Bytes) / float64(frames)
}

// machine describes the host: CPU model and count.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d cores", model, numCPU())
}

// keepLogs copies the stack processes' logs from dir into out.
func keepLogs(dir, out string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(logs) == 0 || os.MkdirAll(out, 0o755) != nil {
		return
	}
	for _, l := range logs {
		if b, err := os.ReadFile(l); err == nil {
			_ = os.WriteFile(filepath.Join(out, filepath.Base(l)), b, 0o644)
		}
	}
}
