package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/replay/archive"
	"github.com/medpipe/medpipe/sink"
)

// Options configures Run.
type Options struct {
	// Decoder opens frames (decrypt.NewDecoder over the live key index or a keys file).
	Decoder *decrypt.Decoder
	// Select chooses the frames.
	Select Selection
	// Speed paces the replay by the frames' receive times: 1 is real time,
	// 10 ten times faster; 0 is as fast as possible.
	Speed float64
	// Sink receives the readings: the same outputs as publish's (an
	// MQTTSink), or JSONLines or CSV. Run connects and closes it.
	Sink sink.Sink
	// Window bounds readings awaiting the sink's acknowledgement (default 1024).
	Window int
	// Progress, when set, is called about every ProgressEvery and once at the end.
	Progress      func(Progress)
	ProgressEvery time.Duration
	// Log receives warnings; nil uses slog.Default().
	Log *slog.Logger
}

// Progress is a replay's state.
type Progress struct {
	Frames   uint64 // frames read from the source
	Readings uint64
	// Done and Total are the source's position (see Source.Position) in Unit.
	Done, Total uint64
	Unit        string
	Elapsed     time.Duration
	Final       bool
}

// Fraction is how far the replay is, 0 to 1 (0 when unknown).
func (p Progress) Fraction() float64 {
	if p.Total == 0 {
		return 0
	}
	return min(float64(p.Done)/float64(p.Total), 1)
}

// ETA estimates the time left (0 when unknown).
func (p Progress) ETA() time.Duration {
	f := p.Fraction()
	if f <= 0 || f >= 1 {
		return 0
	}
	return time.Duration(float64(p.Elapsed) * (1 - f) / f)
}

// Summary is what a replay did.
type Summary struct {
	Scanned     uint64                // frames read from the source
	Frames      uint64                // frames in the time and sequence range that were opened
	Readings    uint64                // readings written (after the device filter)
	DeadLetters map[bus.Reason]uint64 // frames that would go to DEADLETTER, by reason
	FirstSeq    uint64                // first and last stream sequence opened
	LastSeq     uint64
	Elapsed     time.Duration
}

// Rate is frames read per second.
func (s Summary) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Scanned) / s.Elapsed.Seconds()
}

// String is a one-line summary.
func (s Summary) String() string {
	var dl []string
	for _, r := range slices.Sorted(maps.Keys(s.DeadLetters)) {
		dl = append(dl, fmt.Sprintf("%s=%d", r, s.DeadLetters[r]))
	}
	dead := "none"
	if len(dl) > 0 {
		dead = strings.Join(dl, " ")
	}
	return fmt.Sprintf("frames scanned %d, opened %d (seq %d-%d), readings %d, dead letters: %s; %.1fs, %.0f frames/s",
		s.Scanned, s.Frames, s.FirstSeq, s.LastSeq, s.Readings, dead, s.Elapsed.Seconds(), s.Rate())
}

// Run connects o.Sink, replays src into it, waits for its
// acknowledgements and closes it. Dead letters are
// counted, not stored; with device patterns, only those of a matching (or
// unidentified) device are.
func Run(ctx context.Context, src Source, o Options) (Summary, error) {
	sum := Summary{DeadLetters: map[bus.Reason]uint64{}}
	if o.Decoder == nil || o.Sink == nil {
		return sum, errors.New("replay: Decoder and Sink must be set")
	}
	if err := o.Select.Validate(); err != nil {
		return sum, err
	}
	if o.Speed < 0 {
		return sum, fmt.Errorf("replay: speed %g: want 0 (as fast as possible) or more", o.Speed)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 200 * time.Millisecond
	}
	if o.Window <= 0 {
		o.Window = 1024
	}
	if err := o.Sink.Connect(ctx); err != nil {
		return sum, err
	}
	window := sink.NewWindow(o.Window)
	start := time.Now()
	nextProgress := start.Add(o.ProgressEvery)
	report := func(final bool) {
		if o.Progress == nil {
			return
		}
		done, total := src.Position()
		o.Progress(Progress{Frames: sum.Scanned, Readings: sum.Readings, Done: done, Total: total, Unit: src.Unit(), Elapsed: time.Since(start), Final: final})
	}
	var pace pacer
	var frames []*archive.Frame
	err := func() error {
		for {
			msg, err := src.Next(ctx)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			frames, err = unbatch(frames[:0], msg)
			if err != nil {
				sum.Scanned++
				sum.DeadLetters[bus.ReasonMalformed]++
				o.Log.Warn("a RAW batch that cannot be read", "seq", msg.Seq, "err", err)
				continue
			}
			for _, f := range frames {
				sum.Scanned++
				if now := time.Now(); now.After(nextProgress) {
					report(false)
					nextProgress = now.Add(o.ProgressEvery)
				}
				switch o.Select.judge(f) {
				case stop:
					return nil
				case skip:
					continue
				}
				if sum.Frames == 0 {
					sum.FirstSeq = f.Seq
				}
				sum.Frames++
				sum.LastSeq = f.Seq
				out, err := o.Decoder.Decode(ctx, rawSeq(f), nats.Header(f.Header), f.Data)
				if err != nil {
					return fmt.Errorf("replay: frame %d: %w", f.Seq, err)
				}
				if out.Reading == nil {
					if out.Device == "" || o.Select.MatchDevice(out.Device) {
						sum.DeadLetters[out.Reason]++
					}
					continue
				}
				if !o.Select.MatchDevice(out.Reading.Device) {
					continue
				}
				if o.Speed > 0 {
					if err := pace.wait(ctx, out.Reading.Received, o.Speed); err != nil {
						return err
					}
				}
				ack, err := o.Sink.WriteBatch(ctx, []*bus.Reading{out.Reading})
				if err != nil {
					return err
				}
				if err := window.Add(ctx, ack); err != nil {
					return err
				}
				sum.Readings++
			}
		}
	}()
	if err == nil {
		err = window.Drain(ctx)
	}
	if cerr := o.Sink.Close(ctx); err == nil {
		err = cerr
	}
	sum.Elapsed = time.Since(start)
	report(true)
	return sum, err
}

// unbatch appends to dst the frames of a RAW message: itself, or each
// frame of a batch (bus.ProtocolBatch) with the headers a message of
// its own would have carried, so that selection and decoding see what they
// see of single frames.
func unbatch(dst []*archive.Frame, msg *archive.Frame) ([]*archive.Frame, error) {
	h := nats.Header(msg.Header)
	if !bus.IsRawBatch(h) {
		return append(dst, msg), nil
	}
	fs, err := bus.DecodeRawBatch(msg.Data)
	if err != nil {
		return dst, err
	}
	for i := range fs {
		dst = append(dst, &archive.Frame{Seq: msg.Seq, Time: msg.Time, Subject: msg.Subject, Header: fs[i].Header(h), Data: fs[i].Data})
	}
	return dst, nil
}

// rawSeq is the frame's sequence in the stream that first stored it: an
// imported frame's readings say the same as the original's.
func rawSeq(f *archive.Frame) uint64 {
	if v := first(f.Header[HeaderOriginSeq]); v != "" {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			return n
		}
	}
	return f.Seq
}

// pacer holds replayed readings to their original spacing, scaled by speed.
type pacer struct {
	t0, w0 time.Time
}

func (p *pacer) wait(ctx context.Context, at time.Time, speed float64) error {
	if p.t0.IsZero() {
		p.t0, p.w0 = at, time.Now()
		return nil
	}
	d := time.Until(p.w0.Add(time.Duration(float64(at.Sub(p.t0)) / speed)))
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
