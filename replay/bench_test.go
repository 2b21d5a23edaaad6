package replay

import (
	"bufio"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/replay/archive"
	"github.com/medpipe/medpipe/replay/rawgen"
	"github.com/medpipe/medpipe/testkit"
)

// Fleet of the measurements: 1,000 devices (a third v2, with 250 Hz pulse
// batches; the rest legacy pico and pseudo) at 20 readings/s, as `up
// --simulate 1000` runs them.
const (
	benchDevices = 1000
	benchRate    = 20
)

// benchFrames stores seconds of the fleet in an archive file and returns its path.
func benchArchive(b *testing.B, seconds int) (string, archive.Manifest, []rawgen.Device) {
	b.Helper()
	devs := rawgen.Devices(benchDevices, "dev", 10)
	g := rawgen.New(rawgen.Options{Devices: devs, Start: time.Now().Add(-time.Hour), Rate: benchRate, Seed: 10})
	path := filepath.Join(b.TempDir(), "fleet"+archive.FileExt)
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	bw := bufio.NewWriter(f)
	w, err := archive.NewWriter(bw, archive.Header{Stream: bus.StreamRaw})
	if err != nil {
		b.Fatal(err)
	}
	for i := range benchDevices * benchRate * seconds {
		fr, err := g.Next()
		if err != nil {
			b.Fatal(err)
		}
		meta := archive.Frame{Seq: uint64(i + 1), Time: fr.Received.Add(time.Millisecond), Subject: fr.Msg.Subject, Header: fr.Msg.Header, Data: fr.Msg.Data}
		if err := w.Write(&meta); err != nil {
			b.Fatal(err)
		}
	}
	m, err := w.Close()
	if err != nil {
		b.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		b.Fatal(err)
	}
	return path, m, devs
}

// BenchmarkArchiveFleet writes 10 s of the fleet (200,000 frames) and
// reports the compression ratio, the archive's bytes per frame and what an
// hour of the fleet takes: zstd's window is far smaller than an hour, so
// the ratio of 10 s is the ratio of an hour.
//
//	go test -run '^$' -bench ArchiveFleet -benchtime 1x ./replay/
func BenchmarkArchiveFleet(b *testing.B) {
	const seconds = 10
	for b.Loop() {
		path, m, _ := benchArchive(b, seconds)
		st, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		perFrame := float64(st.Size()) / float64(m.Frames)
		b.ReportMetric(float64(m.RecordBytes)/float64(st.Size()), "ratio")
		b.ReportMetric(float64(m.RecordBytes)/float64(m.Frames), "content-B/frame")
		b.ReportMetric(float64(m.DataBytes)/float64(m.Frames), "payload-B/frame")
		b.ReportMetric(perFrame, "archive-B/frame")
		b.ReportMetric(perFrame*benchDevices*benchRate*3600/1e9, "archive-GB/hour")
	}
}

// BenchmarkReplayArchive replays 5 s of the fleet (100,000 frames) from an
// archive file, decrypting every frame, and reports frames/s.
func BenchmarkReplayArchive(b *testing.B) {
	path, m, devs := benchArchive(b, 5)
	dec := decoder(b, devs)
	start := time.Now()
	for b.Loop() {
		src, err := OpenArchive(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		var n countSink
		sum, err := Run(context.Background(), src, Options{Decoder: dec, Sink: &n})
		if err != nil || sum.Readings != m.Frames {
			b.Fatalf("%v: %s", err, sum)
		}
		src.Close()
	}
	b.ReportMetric(float64(m.Frames)*float64(b.N)/time.Since(start).Seconds(), "frames/s")
}

// BenchmarkRaw stores 5 s of the fleet (100,000 frames) in an embedded
// JetStream RAW (file storage, uncompressed by default or S2: see
// --stream-compression), reports the stream's bytes and the store's disk
// bytes per frame, and what an hour and a day of the fleet cost on disk;
// then replays RAW through the ordered consumer and reports frames/s, and
// how fast it exports.
func BenchmarkRaw(b *testing.B) {
	for _, c := range []jetstream.StoreCompression{jetstream.NoCompression, jetstream.S2Compression} {
		b.Run(strings.ToLower(c.String()), func(b *testing.B) { benchmarkRaw(b, c) })
	}
}

func benchmarkRaw(b *testing.B, compression jetstream.StoreCompression) {
	const seconds = 5
	ctx := context.Background()
	bb := testkit.StartBus(b, 0)
	var err error
	if bb.Partitions, err = bus.ApplyStreams(ctx, bb.JS, bus.StreamOptions{Partitions: bus.DefaultPartitions, Compression: compression}); err != nil {
		b.Fatal(err)
	}
	devs := rawgen.Devices(benchDevices, "dev", 10)
	g := rawgen.New(rawgen.Options{Devices: devs, Start: time.Now().Add(-time.Hour), Rate: benchRate, Seed: 10, Partitions: bb.Partitions})
	frames := benchDevices * benchRate * seconds
	record(ctx, b, bb.JS, g, frames)
	s, err := bb.JS.Stream(ctx, bus.StreamRaw)
	if err != nil {
		b.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	disk := dirSize(b, filepath.Join(bb.Server.Server.JetStreamConfig().StoreDir))
	perFrame := float64(disk) / float64(frames)

	dec := decoder(b, devs)
	start := time.Now()
	for b.Loop() {
		src := openRaw(ctx, b, bb.JS, Selection{})
		var n countSink
		sum, err := Run(ctx, src, Options{Decoder: dec, Sink: &n})
		if err != nil || sum.Readings != uint64(frames) {
			b.Fatalf("%v: %s", err, sum)
		}
		src.Close()
	}
	b.ReportMetric(float64(frames)*float64(b.N)/time.Since(start).Seconds(), "frames/s")

	exportStart := time.Now()
	src := openRaw(ctx, b, bb.JS, Selection{})
	m, err := Export(ctx, src, Selection{}, io.Discard, nil)
	src.Close()
	if err != nil || m.Frames != uint64(frames) {
		b.Fatalf("export: %v, %+v", err, m)
	}
	b.ReportMetric(float64(frames)/time.Since(exportStart).Seconds(), "export-frames/s")
	b.ReportMetric(float64(info.State.Bytes)/float64(info.State.Msgs), "stream-B/frame")
	b.ReportMetric(perFrame, "disk-B/frame")
	b.ReportMetric(perFrame*benchDevices*benchRate*3600/1e9, "disk-GB/hour")
}

// dirSize sums the sizes of the files under dir (RAW's blocks dominate).
func dirSize(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}
