package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/publish"
	"github.com/medpipe/medpipe/replay"
	"github.com/medpipe/medpipe/sink"
	"github.com/medpipe/medpipe/stage"
)

const replaySynopsis = `Replays stored frames (RAW, or an archive file with --from-archive) through decrypt's own code
path and key index, to MQTT under replay/Pico/... (--live-topics: the live topics) or as JSON lines or CSV.
Select by --since/--until (RFC 3339 or relative like -2h; the edge's receive time), --device (repeatable,
globs like 'iot_med_dev_0*') and --seq FROM-TO. Reads RAW with an ephemeral ordered consumer: the live
stages' consumers are not touched. Never changes any stream's settings.`

// registerExcept registers the flags register defines, except those skip names.
func registerExcept(fs *flag.FlagSet, register func(*flag.FlagSet), skip func(name string) bool) {
	all := flag.NewFlagSet("", flag.ContinueOnError)
	register(all)
	all.VisitAll(func(f *flag.Flag) {
		if !skip(f.Name) {
			fs.Var(f.Value, f.Name, f.Usage)
		}
	})
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

// selectFlags are the frame selection flags of replay and archive export.
type selectFlags struct {
	since, until, seq string
	devices           stringList
}

func (s *selectFlags) register(fs *flag.FlagSet, devices bool) {
	fs.StringVar(&s.since, "since", "", "first receive time: RFC 3339 (2026-11-25T10:00:00Z) or relative to now (-2h)")
	fs.StringVar(&s.until, "until", "", "end receive time (exclusive): RFC 3339 or relative (-1h)")
	fs.StringVar(&s.seq, "seq", "", "RAW sequence range: FROM-TO, FROM- or N")
	if devices {
		fs.Var(&s.devices, "device", "device id or glob (repeatable, or comma-separated); legacy frames are matched after decryption")
	}
}

func (s *selectFlags) selection(now time.Time) (replay.Selection, error) {
	var sel replay.Selection
	var err error
	if sel.Since, err = replay.ParseTime(s.since, now); err != nil {
		return sel, fmt.Errorf("--since: %w", err)
	}
	if sel.Until, err = replay.ParseTime(s.until, now); err != nil {
		return sel, fmt.Errorf("--until: %w", err)
	}
	if sel.FromSeq, sel.ToSeq, err = replay.ParseSeqRange(s.seq); err != nil {
		return sel, fmt.Errorf("--seq: %w", err)
	}
	sel.Devices = s.devices
	return sel, sel.Validate()
}

func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("replay", replaySynopsis, stderr)
	var (
		lf          logFlags
		nf          natsFlags
		pf          publishFlags
		sf          selectFlags
		keys        string
		fromArchive string
		format      string
		output      string
		speed       float64
		liveTopics  bool
		progress    string
	)
	lf.register(fs)
	nf.registerConn(fs)
	// publish's sink flags, but not its per-partition window (replay has one
	// stream of readings) nor --sink (replay's --format chooses).
	registerExcept(fs, func(fs *flag.FlagSet) { pf.register(fs, publish.DefaultMQTTURL) }, func(name string) bool { return name == "publish-in-flight" || name == "sink" })
	sf.register(fs, true)
	// Replayed readings must not pass for live ones unless asked to.
	prefix := fs.Lookup("prefix")
	prefix.DefValue, prefix.Usage = replay.DefaultPrefix, "first levels of every MQTT topic (--live-topics: the live prefix)"
	_ = prefix.Value.Set(replay.DefaultPrefix)
	fs.StringVar(&keys, "keys", "", "device keys file (JSON lines); without it, keys as they are now in the registry (JetStream KV)")
	fs.StringVar(&fromArchive, "from-archive", "", "replay this archive file instead of RAW (no NATS needed with --keys)")
	archiveKeyFile := registerArchiveKey(fs, "key file of a sealed archive given to from-archive")
	fs.StringVar(&format, "format", "mqtt", "output: mqtt, webhook (see --webhook-*), jsonl (one reading per line) or csv")
	fs.StringVar(&output, "output", "-", "jsonl/csv: file to write ('-': standard output)")
	fs.Float64Var(&speed, "speed", 0, "pace by the frames' receive times: 1 real time, 10 ten times faster, 0 as fast as possible")
	fs.BoolVar(&liveTopics, "live-topics", false, "publish on the live topics (prefix "+publish.DefaultPrefix+", or --prefix) on purpose")
	fs.StringVar(&progress, "progress", "auto", "progress bar on standard error: auto (when a terminal), on or off")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if liveTopics && !set["prefix"] {
		pf.prefix = publish.DefaultPrefix
	}
	sel, err := sf.selection(time.Now())
	if err != nil {
		return err
	}
	if speed < 0 {
		return fmt.Errorf("--speed %g: want 0 or more", speed)
	}
	show, err := progressOn(progress, stderr)
	if err != nil {
		return err
	}

	var js jetstream.JetStream
	if fromArchive == "" || keys == "" {
		// Keys from the registry need its reader's rights: admin (the
		// replay role reads RAW but not the registry).
		nf.role = bus.RoleReplay
		if keys == "" {
			nf.role = bus.RoleAdmin
		}
		nc, j, err := bus.Connect(ctx, nf.conn("medpipe-replay", log))
		if err != nil {
			return err
		}
		defer nc.Close()
		js = j
	}
	ix, keySource, err := keyIndex(ctx, js, keys, log)
	if err != nil {
		return err
	}
	if ix.Len() == 0 {
		log.Warn("no device keys: every frame will count as unknown_device (import keys with medpipe keys import, or give --keys)", "keys", keySource)
	}
	dec, err := decrypt.NewDecoder(ix)
	if err != nil {
		return err
	}

	var src replay.Source
	if fromArchive != "" {
		key, err := archiveKey(*archiveKeyFile)
		if err != nil {
			return err
		}
		a, err := replay.OpenArchive(fromArchive, key)
		if err != nil {
			return err
		}
		src = a
	} else {
		r, err := replay.OpenRaw(ctx, js, bus.StreamRaw, sel)
		if err != nil {
			return err
		}
		src = r
	}
	defer src.Close()

	sink, closeOut, err := replaySink(format, output, stdout, &pf, log)
	if err != nil {
		return err
	}
	defer closeOut()
	log.Info("medpipe replay started", "source", sourceName(fromArchive), "keys", keySource, "devices", ix.Len(), "selection", sel.String(), "format", format, "prefix", pf.prefix, "speed", speed)
	opts := replay.Options{Decoder: dec, Select: sel, Speed: speed, Sink: sink, Log: log}
	if show {
		opts.Progress = progressBar(stderr)
	}
	sum, err := replay.Run(ctx, src, opts)
	fmt.Fprintf(stderr, "replay: %s\n", sum)
	if err != nil {
		return err
	}
	return closeOut()
}

func sourceName(archive string) string {
	if archive != "" {
		return "archive " + archive
	}
	return "stream " + bus.StreamRaw
}

// keyIndex loads the keys file, or the registry as it is now.
func keyIndex(ctx context.Context, js jetstream.JetStream, keysFile string, log *slog.Logger) (*decrypt.KeyIndex, string, error) {
	if keysFile != "" {
		devs, err := decrypt.ReadKeysFile(keysFile, log)
		if err != nil {
			return nil, "", err
		}
		return decrypt.NewKeyIndex(devs), "file " + keysFile, nil
	}
	if js == nil {
		return nil, "", errors.New("no --keys file and no NATS for the registry")
	}
	rctx, cancel := context.WithTimeout(ctx, stage.SetupTimeout)
	defer cancel()
	reg, err := registry.Bind(rctx, js, 1)
	if err != nil {
		return nil, "", err
	}
	ix, err := decrypt.LoadKeyIndex(rctx, reg)
	return ix, "registry " + registry.Bucket, err
}

// replaySink opens the output; closeOut is safe to call twice.
func replaySink(format, output string, stdout io.Writer, pf *publishFlags, log *slog.Logger) (sink.Sink, func() error, error) {
	noop := func() error { return nil }
	switch format {
	case "mqtt":
		mo, err := pf.mqttSinkOptions(false, log, nil)
		if err != nil {
			return nil, noop, err
		}
		mo.ClientIDPrefix = "medpipe-replay-"
		m, err := publish.NewMQTTSink(mo)
		return m, noop, err
	case "webhook":
		w, err := pf.webhook.sink(log, nil)
		return w, noop, err
	}
	w, closeOut, err := openOutput(output, stdout)
	if err != nil {
		return nil, noop, err
	}
	switch format {
	case "jsonl", "json":
		return replay.NewJSONLines(w), closeOut, nil
	case "csv":
		return replay.NewCSV(w), closeOut, nil
	}
	_ = closeOut()
	return nil, noop, fmt.Errorf("--format %q: want mqtt, webhook, jsonl or csv", format)
}

// openOutput opens a file for writing ('-': w); close is idempotent.
func openOutput(path string, w io.Writer) (io.Writer, func() error, error) {
	if path == "-" || path == "" {
		return w, func() error { return nil }, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600) // readings are health data
	if err != nil {
		return nil, nil, fmt.Errorf("--output: %w", err)
	}
	var closed bool
	return f, func() error {
		if closed {
			return nil
		}
		closed = true
		return f.Close()
	}, nil
}

// progressOn decides whether to draw the progress bar.
func progressOn(mode string, stderr io.Writer) (bool, error) {
	switch mode {
	case "on":
		return true, nil
	case "off":
		return false, nil
	case "auto":
		f, ok := stderr.(*os.File)
		if !ok {
			return false, nil
		}
		st, err := f.Stat()
		return err == nil && st.Mode()&os.ModeCharDevice != 0, nil
	}
	return false, fmt.Errorf("--progress %q: want auto, on or off", mode)
}

// progressBar draws, on one line,
//
//	[===========>        ] 41% 2000/4892 frames, 300 readings, 95000 frames/s, ETA 3s
func progressBar(w io.Writer) func(replay.Progress) {
	return func(p replay.Progress) {
		const width = 30
		rate := 0.0
		if p.Elapsed > 0 {
			rate = float64(p.Frames) / p.Elapsed.Seconds()
		}
		bar, pct, pos, eta := strings.Repeat("?", width), "  ?%", fmt.Sprintf("%d frames", p.Frames), ""
		if f := p.Fraction(); p.Total > 0 {
			n := int(f * width)
			bar = strings.Repeat("=", n) + strings.Repeat(" ", width-n)
			pct = fmt.Sprintf("%3.0f%%", f*100)
			if e := p.ETA(); e > 0 {
				eta = ", ETA " + e.Round(time.Second).String()
			}
			switch p.Unit {
			case "frames":
				pos = fmt.Sprintf("%d/%d frames", p.Done, p.Total)
			case "bytes":
				pos = fmt.Sprintf("%d frames (%.1f/%.1f MB read)", p.Frames, float64(p.Done)/1e6, float64(p.Total)/1e6)
			}
		}
		end := "   "
		if p.Final {
			end = "\n"
		}
		fmt.Fprintf(w, "\r[%s] %s %s, %d readings, %.0f frames/s%s%s", bar, pct, pos, p.Readings, rate, eta, end)
	}
}
