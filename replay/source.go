package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/replay/archive"
)

// Source yields stored frames in stream order.
type Source interface {
	// Next returns the next frame (valid until the following call), or
	// io.EOF after the last one.
	Next(ctx context.Context) (*archive.Frame, error)
	// Position reports progress: work done and the total, in the
	// source's own unit (sequence numbers, file bytes); total 0 is unknown.
	Position() (done, total uint64)
	// Unit names Position's unit: "frames" or "bytes".
	Unit() string
	// Close releases the source.
	Close() error
}

// RawSource reads a stream with an ephemeral ordered consumer: no durable
// state on the server, no acks, nothing the live consumers see. It ends at
// the stream's last message when it was opened.
type RawSource struct {
	js       jetstream.JetStream
	stream   jetstream.Stream
	cons     jetstream.Consumer
	it       jetstream.MessagesContext
	first    uint64 // first sequence delivered
	end      uint64 // last sequence to read
	seq      uint64
	frame    archive.Frame
	info     *jetstream.StreamInfo
	idleWait time.Duration
}

// OpenRaw opens stream (RAW) at the start of sel: its first sequence, or
// its start time minus the lateness allowance.
func OpenRaw(ctx context.Context, js jetstream.JetStream, stream string, sel Selection) (*RawSource, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("replay: stream %s: %w", stream, err)
	}
	info := s.CachedInfo()
	end := info.State.LastSeq
	if sel.ToSeq != 0 && sel.ToSeq < end {
		end = sel.ToSeq
	}
	// The server drops the consumer this long after a replay dies without Close.
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, InactiveThreshold: 30 * time.Second}
	switch {
	case sel.FromSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, sel.FromSeq
	case !sel.Since.IsZero():
		start := sel.Since.Add(-lateness)
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	src := &RawSource{js: js, stream: s, end: end, info: info, idleWait: 2 * time.Second}
	if end == 0 || info.State.Msgs == 0 || (sel.FromSeq > end) {
		return src, nil // nothing to read
	}
	if src.cons, err = js.OrderedConsumer(ctx, stream, cfg); err != nil {
		return nil, fmt.Errorf("replay: ordered consumer on %s: %w", stream, err)
	}
	if src.it, err = src.cons.Messages(jetstream.PullMaxMessages(1024)); err != nil {
		return nil, fmt.Errorf("replay: read %s: %w", stream, err)
	}
	return src, nil
}

// Info is the stream's information when the source was opened.
func (r *RawSource) Info() *jetstream.StreamInfo { return r.info }

// Next returns the next frame; io.EOF at the end.
func (r *RawSource) Next(ctx context.Context) (*archive.Frame, error) {
	if r.it == nil || r.seq >= r.end {
		return nil, io.EOF
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, r.idleWait)
		msg, err := r.it.Next(jetstream.NextContext(wctx))
		cancel()
		if err == nil {
			meta, err := msg.Metadata()
			if err != nil {
				return nil, fmt.Errorf("replay: message metadata: %w", err)
			}
			if r.first == 0 {
				r.first = meta.Sequence.Stream
			}
			r.seq = meta.Sequence.Stream
			if r.seq > r.end {
				return nil, io.EOF
			}
			r.frame = archive.Frame{Seq: r.seq, Time: meta.Timestamp, Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()}
			return &r.frame, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoHeartbeat) {
			return nil, fmt.Errorf("replay: read %s: %w", r.info.Config.Name, err)
		}
		// Nothing for a while: the rest up to the end may have aged out.
		ci, err := r.cons.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("replay: read %s: no message for %s, and no consumer info: %w", r.info.Config.Name, r.idleWait, err)
		}
		if ci.NumPending == 0 {
			return nil, io.EOF
		}
	}
}

// Position is sequences read out of those to read.
func (r *RawSource) Position() (done, total uint64) {
	if r.first == 0 {
		return 0, 0
	}
	return r.seq - r.first + 1, r.end - r.first + 1
}

// Unit is "frames": RAW positions are stream sequences.
func (r *RawSource) Unit() string { return "frames" }

// Close stops and deletes the consumer.
func (r *RawSource) Close() error {
	if r.it == nil {
		return nil
	}
	r.it.Stop()
	r.it = nil
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	name := r.cons.CachedInfo().Name
	if err := r.js.DeleteConsumer(ctx, r.info.Config.Name, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("replay: delete consumer %s (the server drops it within a minute anyway): %w", name, err)
	}
	return nil
}

// ArchiveSource reads an archive file.
type ArchiveSource struct {
	f    *os.File
	r    *archive.Reader
	size uint64
	pos  *countingFile
}

// OpenArchive opens an archive file for reading; key opens a sealed one
// (see archive.Unseal), nil a plain one.
func OpenArchive(path string, key []byte) (*ArchiveSource, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("replay: %w", err)
	}
	cf := &countingFile{f: f}
	plain, err := archive.Unseal(cf, key)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r, err := archive.NewReader(plain)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &ArchiveSource{f: f, r: r, size: uint64(st.Size()), pos: cf}, nil
}

// Reader is the archive reader (header, manifest).
func (a *ArchiveSource) Reader() *archive.Reader { return a.r }

// Next returns the next frame; io.EOF once the manifest checked out.
func (a *ArchiveSource) Next(ctx context.Context) (*archive.Frame, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return a.r.Next()
}

// Position is file bytes read out of the file's size.
func (a *ArchiveSource) Position() (done, total uint64) { return a.pos.n, a.size }

// Unit is "bytes": an archive's frame count is known at its end only.
func (a *ArchiveSource) Unit() string { return "bytes" }

// Close closes the file.
func (a *ArchiveSource) Close() error {
	a.r.Close()
	return a.f.Close()
}

type countingFile struct {
	f *os.File
	n uint64
}

func (c *countingFile) Read(p []byte) (int, error) {
	n, err := c.f.Read(p)
	c.n += uint64(n)
	return n, err
}
