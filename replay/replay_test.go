package replay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/replay/archive"
	"github.com/medpipe/medpipe/replay/rawgen"
	"github.com/medpipe/medpipe/sink"
	"github.com/medpipe/medpipe/testkit"
)

// t0 is when recordings start: an hour ago, so that frames are stored
// after they were received, as in life.
var t0 = time.Now().UTC().Add(-time.Hour).Truncate(time.Second)

// record stores frames in RAW as ingest would, and returns them.
func record(ctx context.Context, t testing.TB, js jetstream.JetStream, g *rawgen.Generator, n int) []rawgen.Frame {
	t.Helper()
	frames, err := g.Store(ctx, js, n)
	if err != nil {
		t.Fatal(err)
	}
	return frames
}

// storeJunk stores a frame with garbled headers and one no key opens.
func storeJunk(ctx context.Context, t testing.TB, js jetstream.JetStream, parts int) {
	t.Helper()
	stranger := rawgen.Devices(1, "stranger", 99)
	g := rawgen.New(rawgen.Options{Devices: stranger, Start: t0.Add(5 * time.Second), Partitions: parts, Seed: 99})
	f, err := g.Next()
	if err != nil {
		t.Fatal(err)
	}
	f.Msg.Header.Set(jetstream.MsgIDHeader, "junk-unknown")
	if _, err := js.PublishMsg(ctx, f.Msg); err != nil {
		t.Fatal(err)
	}
	bad := &nats.Msg{Subject: bus.RawSubject(0), Data: []byte("zz"), Header: nats.Header{bus.HeaderConn: {"junk"}, bus.HeaderReceived: {t0.Add(6 * time.Second).Format(time.RFC3339Nano)}}}
	if _, err := js.PublishMsg(ctx, bad); err != nil {
		t.Fatal(err)
	}
}

func decoder(t testing.TB, devs []rawgen.Device) *decrypt.Decoder {
	t.Helper()
	d, err := decrypt.NewDecoder(decrypt.NewKeyIndex(rawgen.Keys(devs)))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// replayJSON replays src as JSON lines.
func replayJSON(ctx context.Context, t testing.TB, src Source, devs []rawgen.Device, sel Selection) (string, Summary) {
	t.Helper()
	var buf bytes.Buffer
	sum, err := Run(ctx, src, Options{Decoder: decoder(t, devs), Select: sel, Sink: NewJSONLines(&buf)})
	if err != nil {
		t.Fatal(err)
	}
	_ = src.Close()
	return buf.String(), sum
}

func openRaw(ctx context.Context, t testing.TB, js jetstream.JetStream, sel Selection) *RawSource {
	t.Helper()
	src, err := OpenRaw(ctx, js, bus.StreamRaw, sel)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// TestSelection replays one recording with several selections and checks
// that exactly the expected readings come out, with the values sent.
func TestSelection(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	b := testkit.StartBus(t, 4)
	devs := rawgen.Devices(10, "dev", 1)
	const rate, seconds = 2, 60
	frames := record(ctx, t, b.JS, rawgen.New(rawgen.Options{Devices: devs, Start: t0, Rate: rate, Partitions: b.Partitions, Seed: 1}), len(devs)*rate*seconds)
	storeJunk(ctx, t, b.JS, b.Partitions)

	cases := []struct {
		name     string
		sel      Selection
		want     func(f rawgen.Frame) bool
		wantDead map[bus.Reason]uint64
	}{
		{"everything", Selection{}, func(rawgen.Frame) bool { return true }, map[bus.Reason]uint64{bus.ReasonMalformed: 1, bus.ReasonUnknownDevice: 1}},
		{"10 s window, legacy and v2 device", Selection{Since: t0.Add(20 * time.Second), Until: t0.Add(30 * time.Second), Devices: []string{"dev-001", "dev-003"}},
			func(f rawgen.Frame) bool {
				id := devs[f.Device].ID
				return (id == "dev-001" || id == "dev-003") && !f.Received.Before(t0.Add(20*time.Second)) && f.Received.Before(t0.Add(30*time.Second))
			}, map[bus.Reason]uint64{}},
		{"glob", Selection{Devices: []string{"dev-00[2-4]"}, Until: t0.Add(10 * time.Second)},
			func(f rawgen.Frame) bool {
				id := devs[f.Device].ID
				return id >= "dev-002" && id <= "dev-004" && f.Received.Before(t0.Add(10*time.Second))
			}, map[bus.Reason]uint64{bus.ReasonMalformed: 1, bus.ReasonUnknownDevice: 1}}, // no device: counted
		{"sequence range", Selection{FromSeq: 101, ToSeq: 200}, func(f rawgen.Frame) bool { return false }, map[bus.Reason]uint64{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, sum := replayJSON(ctx, t, openRaw(ctx, t, b.JS, c.sel), devs, c.sel)
			var want []string
			for i, f := range frames {
				seqIn := c.sel.FromSeq != 0 && uint64(i+1) >= c.sel.FromSeq && uint64(i+1) <= c.sel.ToSeq
				if c.want(f) || seqIn {
					want = append(want, fmt.Sprintf("%s %d %v", devs[f.Device].ID, i+1, f.Reading))
				}
			}
			got := readingLines(t, out)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("got %d readings, want %d\nfirst got:  %.200q\nfirst want: %.200q", len(got), len(want), got, want)
			}
			if fmt.Sprint(sum.DeadLetters) != fmt.Sprint(c.wantDead) || sum.Readings != uint64(len(want)) {
				t.Fatalf("summary %s, want dead letters %v", sum, c.wantDead)
			}
		})
	}
}

// readingLines is a replay's JSON lines as "device raw-seq values" lines.
func readingLines(t testing.TB, out string) []string {
	t.Helper()
	var got []string
	for line := range strings.Lines(out) {
		r, err := bus.UnmarshalReading([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %d %v", r.Device, r.RawSeq, r.Values.Wire()))
	}
	return got
}

// TestExportImportReplay: RAW → archive → a fresh server (twice: stored
// once) → replay gives the very readings the original RAW gives, as does
// replaying the archive file without NATS.
func TestExportImportReplay(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	b := testkit.StartBus(t, 4)
	devs := rawgen.Devices(12, "dev", 2)
	record(ctx, t, b.JS, rawgen.New(rawgen.Options{Devices: devs, Start: t0, Rate: 2, Partitions: b.Partitions, Seed: 2}), 12*2*30)
	storeJunk(ctx, t, b.JS, b.Partitions)
	const total = 12*2*30 + 2

	want, sum := replayJSON(ctx, t, openRaw(ctx, t, b.JS, Selection{}), devs, Selection{})
	if sum.Readings != total-2 {
		t.Fatalf("original: %s", sum)
	}
	path := filepath.Join(t.TempDir(), "raw"+archive.FileExt)
	m := export(ctx, t, b.JS, Selection{}, path)
	if m.Frames != total || m.FirstSeq != 1 || m.LastSeq != total {
		t.Fatalf("manifest %+v", m)
	}

	// Into its own origin, where every frame still is: nothing stored.
	if s := importFile(ctx, t, b.JS, path); s.Stored != 0 || s.Duplicates != total {
		t.Fatalf("import into the origin stream: %+v", s)
	}
	fresh := testkit.StartBus(t, 4)
	for i, wantStored := range []uint64{total, 0} {
		s := importFile(ctx, t, fresh.JS, path)
		if s.Stored != wantStored || s.Frames != total || s.Duplicates != total-wantStored {
			t.Fatalf("import %d: %+v", i+1, s)
		}
	}
	if n := streamMsgs(ctx, t, fresh.JS); n != total {
		t.Fatalf("RAW holds %d frames after two imports, want %d", n, total)
	}
	// Imported frames are history: the live decrypt consumers' partition
	// subjects do not hold them.
	for p := range fresh.Partitions {
		c, err := fresh.JS.CreateOrUpdateConsumer(ctx, bus.StreamRaw, bus.ConsumerConfig("decrypt", p, bus.RawSubject(p), 16))
		if err != nil {
			t.Fatal(err)
		}
		if info, err := c.Info(ctx); err != nil || info.NumPending != 0 {
			t.Fatalf("live consumer of partition %d would get imported frames: %v, %+v", p, err, info)
		}
	}
	got, sum2 := replayJSON(ctx, t, openRaw(ctx, t, fresh.JS, Selection{}), devs, Selection{})
	if got != want || fmt.Sprint(sum2.DeadLetters) != fmt.Sprint(sum.DeadLetters) {
		t.Fatalf("replay after import differs (%s vs %s)", sum2, sum)
	}
	// Exported again and imported into a third server: still the same.
	again := filepath.Join(t.TempDir(), "again"+archive.FileExt)
	export(ctx, t, fresh.JS, Selection{}, again)
	third := testkit.StartBus(t, 4)
	if s := importFile(ctx, t, third.JS, again); s.Stored != total {
		t.Fatalf("second-generation import: %+v", s)
	}
	if got, _ := replayJSON(ctx, t, openRaw(ctx, t, third.JS, Selection{}), devs, Selection{}); got != want {
		t.Fatal("replay after a second-generation import differs")
	}
	src, err := OpenArchive(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, _ := replayJSON(ctx, t, src, devs, Selection{})
	if fromFile != want {
		t.Fatal("replay from the archive file differs")
	}
	// Imported frames keep their receive times: a window selects them.
	sel := Selection{Since: t0.Add(10 * time.Second), Until: t0.Add(12 * time.Second)}
	a, _ := replayJSON(ctx, t, openRaw(ctx, t, b.JS, sel), devs, sel)
	c, _ := replayJSON(ctx, t, openRaw(ctx, t, fresh.JS, sel), devs, sel)
	if a != c || strings.Count(a, "\n") != 12*2*2 {
		t.Fatalf("window: %d readings from the original, %d after import", strings.Count(a, "\n"), strings.Count(c, "\n"))
	}
}

func export(ctx context.Context, t testing.TB, js jetstream.JetStream, sel Selection, path string) archive.Manifest {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	src := openRaw(ctx, t, js, sel)
	defer src.Close()
	w := bufio.NewWriter(f)
	m, err := Export(ctx, src, sel, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return m
}

func importFile(ctx context.Context, t testing.TB, js jetstream.JetStream, path string) ImportSummary {
	t.Helper()
	s, err := importPath(ctx, js, path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func importPath(ctx context.Context, js jetstream.JetStream, path string) (ImportSummary, error) {
	f, err := os.Open(path)
	if err != nil {
		return ImportSummary{}, err
	}
	defer f.Close()
	r, err := archive.NewReader(bufio.NewReader(f))
	if err != nil {
		return ImportSummary{}, err
	}
	defer r.Close()
	return Import(ctx, js, r, ImportOptions{CheckpointEvery: 100})
}

func streamMsgs(ctx context.Context, t testing.TB, js jetstream.JetStream) uint64 {
	t.Helper()
	return streamCount(ctx, t, js, bus.StreamRaw)
}

// streamCount is how many messages stream holds.
func streamCount(ctx context.Context, t testing.TB, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestCorruptArchive: a damaged archive is refused by Verify and by Import
// with the position of the damage; the frames before it are imported, and
// importing the intact file afterwards adds only the rest.
func TestCorruptArchive(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	b := testkit.StartBus(t, 4)
	devs := rawgen.Devices(6, "dev", 3)
	const total = 3000
	record(ctx, t, b.JS, rawgen.New(rawgen.Options{Devices: devs, Start: t0, Rate: 5, Partitions: b.Partitions, Seed: 3}), total)
	dir := t.TempDir()
	good := filepath.Join(dir, "good"+archive.FileExt)
	export(ctx, t, b.JS, Selection{}, good)
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x10
	bad := filepath.Join(dir, "bad"+archive.FileExt)
	if err := os.WriteFile(bad, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(bad)
	if err != nil {
		t.Fatal(err)
	}
	_, _, verr := archive.Verify(f)
	f.Close()
	var ce *archive.CorruptError
	if !errors.As(verr, &ce) || ce.Frame == 0 || ce.Frame >= total {
		t.Fatalf("verify: want the damage located mid-file, got %v", verr)
	}
	fresh := testkit.StartBus(t, 4)
	s, ierr := importPath(ctx, fresh.JS, bad)
	var ice *archive.CorruptError
	if !errors.As(ierr, &ice) || ice.Frame != ce.Frame {
		t.Fatalf("import: want the damage at frame %d, got %v", ce.Frame, ierr)
	}
	t.Logf("verify and import: %v; %d frames stored before it", verr, s.Stored)
	if s.Stored > ice.Frame {
		t.Fatalf("%d frames stored, but only %d read intact", s.Stored, ice.Frame)
	}
	s2 := importFile(ctx, t, fresh.JS, good)
	if s2.Stored+s.Stored != total || streamMsgs(ctx, t, fresh.JS) != total {
		t.Fatalf("after the intact import: %+v, RAW holds %d", s2, streamMsgs(ctx, t, fresh.JS))
	}
}

// TestReplayLeavesLiveConsumersAlone replays RAW while a live decrypt
// worker consumes it and new frames arrive: the worker's durable consumers
// deliver each frame exactly once, READINGS gets every reading once, and
// no consumer is left behind.
func TestReplayLeavesLiveConsumersAlone(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	b := testkit.StartBus(t, 4)
	devs := rawgen.Devices(20, "dev", 4)
	g := rawgen.New(rawgen.Options{Devices: devs, Start: t0, Rate: 10, Partitions: b.Partitions, Seed: 4})
	const before, during = 4000, 4000
	record(ctx, t, b.JS, g, before)

	seqs, err := bus.OpenSeqStore(ctx, b.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	w, err := decrypt.New(b.JS, decrypt.Options{Keys: rawgen.Keys(devs), Partitions: b.Partitions, Seqs: seqs})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() { stop(); <-done }()

	replayed := make(chan Summary, 1)
	go func() {
		var n countSink
		src := openRaw(ctx, t, b.JS, Selection{})
		sum, err := Run(ctx, src, Options{Decoder: decoder(t, devs), Sink: &n})
		if err != nil {
			t.Error(err)
		}
		if err := src.Close(); err != nil {
			t.Error(err)
		}
		replayed <- sum
	}()
	record(ctx, t, b.JS, g, during) // live traffic while replaying
	sum := <-replayed
	if sum.Readings < before || sum.Readings > before+during {
		t.Fatalf("replay: %s", sum)
	}
	b.WaitDrained(t, bus.StreamRaw, "decrypt")
	var delivered uint64
	names := b.JS.Stream
	s, err := names(ctx, bus.StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	for p := range b.Partitions {
		c, err := s.Consumer(ctx, fmt.Sprintf("decrypt-%d", p))
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumRedelivered != 0 {
			t.Errorf("decrypt-%d: %d redelivered", p, info.NumRedelivered)
		}
		delivered += info.Delivered.Consumer
	}
	if delivered != before+during {
		t.Fatalf("live consumers delivered %d frames, want %d", delivered, before+during)
	}
	if n := streamCount(ctx, t, b.JS, bus.StreamReadings); n != before+during {
		t.Fatalf("READINGS holds %d, want %d", n, before+during)
	}
	// The ordered consumer is deleted when replay closes its source; only
	// the durable ones remain.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var extra []string
		for name := range s.ListConsumers(ctx).Info() {
			if !strings.HasPrefix(name.Name, "decrypt-") {
				extra = append(extra, name.Name)
			}
		}
		if len(extra) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumers left on RAW after replay: %v", extra)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// countSink counts readings.
type countSink struct{ n uint64 }

func (c *countSink) Connect(context.Context) error { return nil }
func (c *countSink) WriteBatch(_ context.Context, b []*bus.Reading) (sink.Ack, error) {
	c.n += uint64(len(b))
	return sink.Done(nil), nil
}
func (c *countSink) Close(context.Context) error { return nil }

// TestSpeed: --speed 10 replays two seconds of readings in no less than a
// tenth of that (only the lower bound: a slow machine may take longer).
func TestSpeed(t *testing.T) {
	devs := rawgen.Devices(2, "dev", 8)
	g := rawgen.New(rawgen.Options{Devices: devs, Start: t0, Rate: 10, Seed: 8})
	path := filepath.Join(t.TempDir(), "speed"+archive.FileExt)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := archive.NewWriter(f, archive.Header{Stream: bus.StreamRaw})
	if err != nil {
		t.Fatal(err)
	}
	var span time.Duration
	for i := range 40 {
		fr, err := g.Next()
		if err != nil {
			t.Fatal(err)
		}
		span = fr.Received.Sub(t0)
		if err := w.Write(&archive.Frame{Seq: uint64(i + 1), Time: fr.Received, Subject: fr.Msg.Subject, Header: fr.Msg.Header, Data: fr.Msg.Data}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	src, err := OpenArchive(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var n countSink
	sum, err := Run(t.Context(), src, Options{Decoder: decoder(t, devs), Sink: &n, Speed: 10})
	if err != nil || n.n != 40 {
		t.Fatalf("%v: %s", err, sum)
	}
	if least := span / 10; sum.Elapsed < least {
		t.Fatalf("%s of readings replayed at speed 10 in %s, want at least %s", span, sum.Elapsed, least)
	}
}
