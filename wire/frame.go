package wire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"time"
)

// Errors from FrameReader. Each one leaves the stream at an unknown position,
// so the connection must be closed.
var (
	ErrFrameTooLong  = errors.New("wire: frame exceeds the maximum size")
	ErrFrameTooShort = errors.New("wire: frame is shorter than any reading")
	ErrTruncated     = errors.New("wire: stream ended inside a frame")
	ErrIdle          = errors.New("wire: no frame within the idle timeout")
)

// Defaults for FrameReaderOptions, and the v2 frame bound.
const (
	// DefaultMaxFrame bounds a v2 frame's bytes (legacy frames are bounded
	// in blocks, see DefaultMaxBlocks).
	DefaultMaxFrame     = 8 << 10
	DefaultIdleGap      = 10 * time.Millisecond
	DefaultFrameTimeout = 5 * time.Second
)

// DefaultMaxBlocks is the most blocks a legacy frame holds by default: the
// longest reading a device writes (MaxReadingLen) sealed. MinReadingBlocks
// is the fewest any valid reading takes: a shorter frame can never decrypt
// into a reading, whichever key is tried.
var (
	DefaultMaxBlocks = LegacyBlocks(MaxReadingLen)
	MinReadingBlocks = LegacyBlocks(MinReadingLen)
)

// FrameReaderOptions bounds a FrameReader. Zero values take the defaults.
type FrameReaderOptions struct {
	// MaxBlocks is the most blocks a frame may hold (default
	// DefaultMaxBlocks); the '+' announcing one more is ErrFrameTooLong.
	MaxBlocks int
	// MinBlocks is the fewest blocks a frame may hold (default 0: any); a
	// shorter frame is ErrFrameTooShort. The edge sets MinReadingBlocks.
	MinBlocks int
	// IdleGap ends a frame when no byte follows its last block for this long
	// (default 10 ms). The legacy stream has no delimiter: a frame ends at a
	// block not followed by '+', known for sure only when the next byte
	// arrives. The gap must be shorter than the devices' send interval (50 ms).
	IdleGap time.Duration
	// FrameTimeout bounds the time from a frame's first byte to its last
	// (default 5 s); a slower frame is an error.
	FrameTimeout time.Duration
	// IdleTimeout bounds the wait for the first byte of a frame; zero waits
	// for ever. Exceeding it returns ErrIdle.
	IdleTimeout time.Duration
}

func (o *FrameReaderOptions) setDefaults() {
	if o.MaxBlocks <= 0 {
		o.MaxBlocks = DefaultMaxBlocks
	}
	if o.IdleGap <= 0 {
		o.IdleGap = DefaultIdleGap
	}
	if o.FrameTimeout <= 0 {
		o.FrameTimeout = DefaultFrameTimeout
	}
}

// readDeadliner is what FrameReader needs of a net.Conn to time frames.
type readDeadliner interface {
	SetReadDeadline(t time.Time) error
}

// FrameReader cuts a legacy byte stream into frames: 32 hex characters per
// block, blocks joined by '+', frames back to back with nothing between them.
// When the source has read deadlines (a net.Conn), a frame also ends after
// IdleGap without a further byte; otherwise it ends when the next frame's
// first byte or the end of the stream arrives.
type FrameReader struct {
	br   *bufio.Reader
	dl   readDeadliner
	opts FrameReaderOptions
	buf  []byte
	// frameDeadline ends the current frame (FrameTimeout after its first
	// byte); deadlineSet says the source has it.
	frameDeadline time.Time
	deadlineSet   bool
}

// NewFrameReader returns a FrameReader reading from r.
func NewFrameReader(r io.Reader, opts FrameReaderOptions) *FrameReader {
	dl, _ := r.(readDeadliner)
	return NewFrameReaderFrom(bufio.NewReaderSize(r, 1024), dl, opts)
}

// NewFrameReaderFrom returns a FrameReader on an existing buffered reader
// (one that already peeked at the stream, say), timing frames with conn's
// read deadlines when conn is not nil.
func NewFrameReaderFrom(br *bufio.Reader, conn interface{ SetReadDeadline(time.Time) error }, opts FrameReaderOptions) *FrameReader {
	opts.setDefaults()
	fr := &FrameReader{br: br, opts: opts}
	if conn != nil {
		fr.dl = conn
	}
	return fr
}

// Buffered returns the number of bytes read from the source but not yet framed.
func (fr *FrameReader) Buffered() int { return fr.br.Buffered() }

// Next returns the next frame's wire text. The slice is valid until the next
// call. At a clean end of stream it returns io.EOF; any other error means the
// stream is unusable.
//
// Deadlines are set only before a read from the source: a frame already
// in the buffer costs no deadline at all, and one read whole in a single
// read sets two (the idle wait, then the gap after it).
func (fr *FrameReader) Next() ([]byte, error) {
	fr.buf = fr.buf[:0]
	fr.frameDeadline = time.Time{}
	// The frame's first byte, awaited under the idle timeout; from it on,
	// the whole frame must arrive within FrameTimeout.
	if fr.br.Buffered() == 0 {
		if err := fr.deadline(fr.opts.IdleTimeout); err != nil {
			return nil, err
		}
		if _, err := fr.br.Peek(1); err != nil {
			return nil, fr.readError(err)
		}
	}
	if fr.dl != nil {
		fr.frameDeadline = time.Now().Add(fr.opts.FrameTimeout)
		fr.deadlineSet = false // the source still has the idle deadline
	}
	for blocks := 1; ; blocks++ {
		if err := fr.readBlock(); err != nil {
			return nil, err
		}
		// After a block: '+' continues the frame, anything else starts the next.
		gap := fr.br.Buffered() == 0 && fr.dl != nil
		if gap {
			if err := fr.dl.SetReadDeadline(time.Now().Add(fr.opts.IdleGap)); err != nil {
				return nil, err
			}
			fr.deadlineSet = false
		}
		next, err := fr.br.Peek(1)
		if err != nil || next[0] != '+' {
			// Timeout, end of stream or a next frame: this frame is complete.
			// A real read error surfaces again on the next call.
			if blocks < fr.opts.MinBlocks {
				return nil, fmt.Errorf("%w: %d blocks, a reading takes at least %d", ErrFrameTooShort, blocks, fr.opts.MinBlocks)
			}
			return fr.buf, nil
		}
		if blocks >= fr.opts.MaxBlocks {
			return nil, fmt.Errorf("%w (%d blocks)", ErrFrameTooLong, fr.opts.MaxBlocks)
		}
		_, _ = fr.br.ReadByte()
		fr.buf = append(fr.buf, '+')
	}
}

// readBlock appends one block of hex digits to fr.buf, taking whatever the
// buffer holds at once rather than a byte at a time.
func (fr *FrameReader) readBlock() error {
	for need := 2 * BlockSize; need > 0; {
		if fr.br.Buffered() == 0 {
			if err := fr.inFrame(); err != nil {
				return err
			}
			if _, err := fr.br.Peek(1); err != nil {
				return fr.readError(err)
			}
		}
		p, _ := fr.br.Peek(min(need, fr.br.Buffered()))
		for i, c := range p {
			if !IsHexDigit(c) {
				return fmt.Errorf("%w: byte %d is %s", ErrNotHex, len(fr.buf)+i, quoteByte(c))
			}
		}
		fr.buf = append(fr.buf, p...)
		need -= len(p)
		_, _ = fr.br.Discard(len(p))
	}
	return nil
}

// inFrame puts the frame's deadline on the source before a read inside
// a frame, unless it is there already.
func (fr *FrameReader) inFrame() error {
	if fr.dl == nil || fr.deadlineSet {
		return nil
	}
	fr.deadlineSet = true
	return fr.dl.SetReadDeadline(fr.frameDeadline)
}

func (fr *FrameReader) deadline(d time.Duration) error {
	if fr.dl == nil {
		return nil
	}
	var t time.Time
	if d > 0 {
		t = time.Now().Add(d)
	}
	return fr.dl.SetReadDeadline(t)
}

func (fr *FrameReader) readError(err error) error {
	if len(fr.buf) == 0 {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		if isTimeout(err) {
			return fmt.Errorf("%w: %w", ErrIdle, err)
		}
		return err
	}
	if errors.Is(err, io.EOF) {
		// Not io.EOF itself: callers take that for a clean end of stream.
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%w after %d bytes: %w", ErrTruncated, len(fr.buf), err)
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
