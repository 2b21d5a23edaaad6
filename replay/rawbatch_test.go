package replay

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/replay/archive"
	"github.com/medpipe/medpipe/replay/rawgen"
	"github.com/medpipe/medpipe/testkit"
)

// storeBatched stores n generated frames in RAW as an edge with --raw-batch
// does: a partition's frames, legacy and v2, in batches of up to size. It
// returns what replay must give, in RAW's order, as
// "device raw-seq values" lines.
func storeBatched(ctx context.Context, t testing.TB, js jetstream.JetStream, g *rawgen.Generator, devs []rawgen.Device, parts, n, size int) []string {
	t.Helper()
	type pending struct {
		frames []rawgen.Frame
		bodies []bus.RawFrame
	}
	gathered := make([]pending, parts)
	var want []string
	batches := 0
	store := func(msg *nats.Msg, frames []rawgen.Frame) {
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range frames {
			want = append(want, fmt.Sprintf("%s %d %v", devs[f.Device].ID, ack.Sequence, f.Reading))
		}
	}
	flush := func(p int) {
		pd := &gathered[p]
		if len(pd.bodies) == 0 {
			return
		}
		var records []byte
		for i := range pd.bodies {
			var err error
			if records, err = bus.AppendRawFrame(records, &pd.bodies[i]); err != nil {
				t.Fatal(err)
			}
		}
		batches++
		store(&nats.Msg{Subject: bus.RawSubject(p), Data: bus.AppendRawBatch(nil, len(pd.bodies), records), Header: nats.Header{
			bus.HeaderEdge: {"edge1"}, bus.HeaderProtocol: {bus.ProtocolBatch},
			bus.HeaderReceived: {pd.bodies[0].Received.Format(time.RFC3339Nano)}, jetstream.MsgIDHeader: {"edge1:x:b" + strconv.Itoa(batches)},
		}}, pd.frames)
		*pd = pending{}
	}
	for range n {
		f, err := g.Next()
		if err != nil {
			t.Fatal(err)
		}
		h := f.Msg.Header
		p, _ := strconv.Atoi(strings.TrimPrefix(f.Msg.Subject, bus.SubjectRawPrefix))
		pd := &gathered[p]
		pd.frames = append(pd.frames, f)
		pd.bodies = append(pd.bodies, bus.RawFrame{Protocol: h.Get(bus.HeaderProtocol), Device: h.Get(bus.HeaderDevice), Conn: h.Get(bus.HeaderConn), Seq: f.Seq, Received: f.Received, Remote: h.Get(bus.HeaderRemote), Local: h.Get(bus.HeaderLocal), Data: f.Msg.Data})
		if len(pd.bodies) == size {
			flush(p)
		}
	}
	for p := range parts {
		flush(p)
	}
	return want
}

// TestReplayRawBatches: frames the edge stored in batches replay as the
// same readings as single frames do (their raw_seq is their batch's),
// from RAW, from an archive file, and from RAW after an import; a time
// window selects frames, not batches.
func TestReplayRawBatches(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	b := testkit.StartBus(t, 4)
	devs := rawgen.Devices(12, "dev", 5)
	const n = 12 * 2 * 30
	want := storeBatched(ctx, t, b.JS, rawgen.New(rawgen.Options{Devices: devs, Start: t0, Rate: 2, Partitions: b.Partitions, Seed: 5}), devs, b.Partitions, n, 16)
	out, sum := replayJSON(ctx, t, openRaw(ctx, t, b.JS, Selection{}), devs, Selection{})
	if got := readingLines(t, out); strings.Join(got, "\n") != strings.Join(want, "\n") || sum.Scanned != n || sum.Readings != n || len(sum.DeadLetters) != 0 {
		t.Fatalf("replay of batches: %s; %d readings, want %d\nfirst got:  %.300q\nfirst want: %.300q", sum, len(got), len(want), got, want)
	}

	path := filepath.Join(t.TempDir(), "raw"+archive.FileExt)
	export(ctx, t, b.JS, Selection{}, path)
	src, err := OpenArchive(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fromFile, _ := replayJSON(ctx, t, src, devs, Selection{}); fromFile != out {
		t.Fatal("replay of batches from the archive file differs")
	}
	fresh := testkit.StartBus(t, 4)
	importFile(ctx, t, fresh.JS, path)
	if imported, _ := replayJSON(ctx, t, openRaw(ctx, t, fresh.JS, Selection{}), devs, Selection{}); imported != out {
		t.Fatal("replay of imported batches differs")
	}

	// 2 s of 12 devices at 2/s: 48 frames, whatever batch they sit in.
	sel := Selection{Since: t0.Add(10 * time.Second), Until: t0.Add(12 * time.Second)}
	if w, _ := replayJSON(ctx, t, openRaw(ctx, t, b.JS, sel), devs, sel); strings.Count(w, "\n") != 12*2*2 {
		t.Fatalf("window: %d readings, want %d", strings.Count(w, "\n"), 12*2*2)
	}

	// A batch whose body cannot be read is counted as malformed, once.
	if _, err := b.JS.PublishMsg(ctx, &nats.Msg{Subject: bus.RawSubject(1), Data: []byte{0xBB, 9}, Header: nats.Header{bus.HeaderProtocol: {bus.ProtocolBatch}}}); err != nil {
		t.Fatal(err)
	}
	if _, sum := replayJSON(ctx, t, openRaw(ctx, t, b.JS, Selection{}), devs, Selection{}); sum.DeadLetters[bus.ReasonMalformed] != 1 || sum.Readings != n {
		t.Fatalf("with a garbled batch: %s", sum)
	}
}
