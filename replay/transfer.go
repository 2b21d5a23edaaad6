package replay

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/replay/archive"
)

// Origin names a stream instance: its name and creation time. Frames
// exported from it keep it, so an import knows what it already holds.
func Origin(info *jetstream.StreamInfo) string {
	return info.Config.Name + "@" + info.Created.UTC().Format(time.RFC3339Nano)
}

// Export writes the frames of src that sel selects (time and sequence
// ranges; not devices: legacy frames are only attributable once opened)
// to w as an archive, in constant memory.
func Export(ctx context.Context, src *RawSource, sel Selection, w io.Writer, progress func(Progress)) (archive.Manifest, error) {
	if len(sel.Devices) > 0 {
		return archive.Manifest{}, errors.New("replay: export selects by time and sequence only (use replay --device to extract devices)")
	}
	info := src.Info()
	parts, _ := strconv.Atoi(info.Config.Metadata["medpipe_partitions"]) // bus records its partition count there
	aw, err := archive.NewWriter(w, archive.Header{Stream: info.Config.Name, Origin: Origin(info), Partitions: parts, Selection: sel.String()})
	if err != nil {
		return archive.Manifest{}, err
	}
	start := time.Now()
	next := start.Add(200 * time.Millisecond)
	var scanned uint64
	for {
		f, err := src.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return aw.Manifest(), err
		}
		scanned++
		if progress != nil && time.Now().After(next) {
			done, total := src.Position()
			progress(Progress{Frames: scanned, Done: done, Total: total, Unit: src.Unit(), Elapsed: time.Since(start)})
			next = time.Now().Add(200 * time.Millisecond)
		}
		v := sel.judge(f)
		if v == stop {
			break
		}
		if v == skip {
			continue
		}
		if err := aw.Write(f); err != nil {
			return aw.Manifest(), err
		}
	}
	m, err := aw.Close()
	if progress != nil {
		done, total := src.Position()
		progress(Progress{Frames: scanned, Done: done, Total: total, Unit: src.Unit(), Elapsed: time.Since(start), Final: true})
	}
	return m, err
}

// ImportBucket is the KV bucket recording which frames of which origin
// were imported, so that importing an archive again stores nothing twice
// however long after (a stream's duplicate window is seconds: bus.DefaultDuplicateWindow).
const ImportBucket = bus.ImportBucket

// Import header names set on imported frames.
const (
	HeaderOrigin        = "Medpipe-Origin"         // the archive's origin stream instance
	HeaderOriginSeq     = "Medpipe-Origin-Seq"     // the frame's sequence there
	HeaderOriginSubject = "Medpipe-Origin-Subject" // the frame's subject there
)

// ImportSubject is the RAW subject imported frames are stored under: inside
// RAW (replay and export read them) but outside every partition subject, so
// the live decrypt workers never take old frames for new ones and
// republish them on the live topics.
const ImportSubject = bus.SubjectRawPrefix + "imported"

// ImportOptions configures Import.
type ImportOptions struct {
	// Stream to import into (bus.StreamRaw).
	Stream string
	// Replicas of the import ledger bucket when it is created.
	Replicas int
	// OriginalSubjects stores frames under their original (partition)
	// subjects instead of ImportSubject: live decrypt workers then process
	// them as new frames (legacy readings are republished live; v2 frames
	// are refused as replayed). For rebuilding a server, not for history.
	OriginalSubjects bool
	// CheckpointEvery is how many frames are stored between ledger updates (default 10000).
	CheckpointEvery int
	Progress        func(Progress)
}

// ImportSummary is what an import did.
type ImportSummary struct {
	Frames     uint64 // frames in the archive (read)
	Stored     uint64 // frames stored
	Duplicates uint64 // frames already there (imported before, or still in their origin stream)
	Elapsed    time.Duration
}

// ledger is the import record of one origin: imported sequence ranges.
type ledger struct {
	Origin string      `json:"origin"`
	Ranges [][2]uint64 `json:"ranges"` // sorted, disjoint, inclusive
}

func (l *ledger) contains(seq uint64) bool {
	i := sort.Search(len(l.Ranges), func(i int) bool { return l.Ranges[i][1] >= seq })
	return i < len(l.Ranges) && l.Ranges[i][0] <= seq
}

// add merges [lo, hi] into the ranges.
func (l *ledger) add(lo, hi uint64) {
	rs := append(l.Ranges, [2]uint64{lo, hi})
	sort.Slice(rs, func(i, j int) bool { return rs[i][0] < rs[j][0] })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r[0] <= out[n-1][1]+1 {
			out[n-1][1] = max(out[n-1][1], r[1])
			continue
		}
		out = append(out, r)
	}
	l.Ranges = out
}

func ledgerKey(origin string) string {
	h := sha256.Sum256([]byte(origin))
	return "o" + hex.EncodeToString(h[:16])
}

// Import stores the frames of r in o.Stream under ImportSubject (or their
// original subjects) with their headers (plus HeaderOrigin, HeaderOriginSeq
// and HeaderOriginSubject), skipping frames
// already imported from the same origin and, when importing into the
// origin stream itself, frames it still holds. A damaged archive stops
// the import at the damage with a *archive.CorruptError; frames before it
// are stored and recorded, so importing a repaired file later adds only
// the rest.
func Import(ctx context.Context, js jetstream.JetStream, r *archive.Reader, o ImportOptions) (ImportSummary, error) {
	var sum ImportSummary
	start := time.Now()
	if o.Stream == "" {
		o.Stream = bus.StreamRaw
	}
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = 10000
	}
	s, err := js.Stream(ctx, o.Stream)
	if err != nil {
		return sum, fmt.Errorf("replay: import into %s: %w", o.Stream, err)
	}
	origin := r.Header().Origin
	if origin == "" { // an archive not written by Export: dedupe by the file's identity
		origin = "archive@" + r.Header().Created.UTC().Format(time.RFC3339Nano)
	}
	var stillThere uint64 // importing into the origin itself: frames from here on are still stored
	if origin == Origin(s.CachedInfo()) {
		stillThere = max(s.CachedInfo().State.FirstSeq, 1)
	}
	var rev uint64
	led := &ledger{Origin: origin}
	kv, err := bus.BindBucket(ctx, js, ImportBucket, o.Replicas)
	if err != nil {
		return sum, fmt.Errorf("replay: open bucket %s: %w", ImportBucket, err)
	}
	e, err := kv.Get(ctx, ledgerKey(origin))
	switch {
	case err == nil:
		if err := json.Unmarshal(e.Value(), led); err != nil {
			return sum, fmt.Errorf("replay: import ledger of %s: %w", origin, err)
		}
		rev = e.Revision()
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return sum, fmt.Errorf("replay: import ledger of %s: %w", origin, err)
	}
	var pending []jetstream.PubAckFuture
	var runLo, runHi uint64 // the current run of consecutive stored sequences
	var runs [][2]uint64
	// checkpoint waits for every pending publish, then records the runs.
	checkpoint := func() error {
		for _, f := range pending {
			select {
			case ack := <-f.Ok():
				if ack.Duplicate {
					sum.Duplicates++
				} else {
					sum.Stored++
				}
			case err := <-f.Err():
				return fmt.Errorf("replay: import: store frame: %w", err)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		pending = pending[:0]
		if runHi != 0 {
			runs = append(runs, [2]uint64{runLo, runHi})
			runLo, runHi = 0, 0
		}
		if len(runs) == 0 {
			return nil
		}
		for _, rg := range runs {
			led.add(rg[0], rg[1])
		}
		runs = runs[:0]
		b, err := json.Marshal(led)
		if err != nil {
			return fmt.Errorf("replay: import ledger: %w", err)
		}
		if rev == 0 {
			rev, err = kv.Create(ctx, ledgerKey(origin), b)
		} else {
			rev, err = kv.Update(ctx, ledgerKey(origin), b, rev)
		}
		if err != nil {
			return fmt.Errorf("replay: import ledger of %s (another import of the same origin running?): %w", origin, err)
		}
		return nil
	}
	next := start.Add(200 * time.Millisecond)
	var readErr error
	for {
		f, err := r.Next()
		if err != nil {
			if err != io.EOF {
				readErr = err
			}
			break
		}
		sum.Frames++
		if o.Progress != nil && time.Now().After(next) {
			o.Progress(Progress{Frames: sum.Frames, Elapsed: time.Since(start)})
			next = time.Now().Add(200 * time.Millisecond)
		}
		if led.contains(f.Seq) || (stillThere != 0 && f.Seq >= stillThere) {
			sum.Duplicates++
			continue
		}
		msg := &nats.Msg{Subject: ImportSubject, Data: f.Data, Header: nats.Header{}}
		for k, vs := range f.Header {
			// JetStream control headers (the edge's message id, expected
			// stream…) would act on this publish; the origin replaces them.
			if bus.IsControlHeader(k) {
				continue
			}
			msg.Header[k] = vs
		}
		// A frame imported before keeps the stream that first stored it.
		if msg.Header.Get(HeaderOrigin) == "" {
			msg.Header.Set(HeaderOrigin, origin)
			msg.Header.Set(HeaderOriginSeq, strconv.FormatUint(f.Seq, 10))
			msg.Header.Set(HeaderOriginSubject, f.Subject)
		}
		if o.OriginalSubjects {
			msg.Subject = cmp.Or(msg.Header.Get(HeaderOriginSubject), f.Subject)
		}
		msg.Header.Set(jetstream.MsgIDHeader, "import:"+ledgerKey(origin)+":"+strconv.FormatUint(f.Seq, 10))
		fut, err := js.PublishMsgAsync(msg, bus.Backpressure)
		if err != nil {
			return sum, fmt.Errorf("replay: import: store frame %d: %w", f.Seq, err)
		}
		pending = append(pending, fut)
		switch {
		case runHi != 0 && f.Seq == runHi+1:
			runHi = f.Seq
		default:
			if runHi != 0 {
				runs = append(runs, [2]uint64{runLo, runHi})
			}
			runLo, runHi = f.Seq, f.Seq
		}
		if len(pending) >= o.CheckpointEvery {
			if err := checkpoint(); err != nil {
				return sum, err
			}
		}
	}
	if err := checkpoint(); err != nil {
		return sum, errors.Join(err, readErr)
	}
	sum.Elapsed = time.Since(start)
	if o.Progress != nil {
		o.Progress(Progress{Frames: sum.Frames, Elapsed: sum.Elapsed, Final: true})
	}
	return sum, readErr
}
