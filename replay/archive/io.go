package archive

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Writer writes an archive. Frames must come in increasing sequence order.
type Writer struct {
	out     *countingWriter
	enc     *zstd.Encoder
	rec     []byte // one record, reused: constant memory
	payload []byte
	sum     hash.Hash
	m       Manifest
	err     error
	closed  bool
}

// NewWriter starts an archive on w with header h (Format, Version and,
// when zero, Created are filled in).
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	out := &countingWriter{w: w}
	// One goroutine and the default level: about as fast as RAW arrives on
	// a busy day, and the ratio barely improves with higher levels on
	// ciphertext-in-hex (see README).
	enc, err := zstd.NewWriter(out, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, fmt.Errorf("archive: zstd: %w", err)
	}
	h.Format, h.Version = Format, Version
	if h.Created.IsZero() {
		h.Created = time.Now().UTC()
	}
	aw := &Writer{out: out, enc: enc, sum: sha256.New(), m: Manifest{Stream: h.Stream, Subjects: map[string]uint64{}}}
	b, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("archive: header: %w", err)
	}
	if err := aw.record(recHeader, b); err != nil {
		return nil, err
	}
	return aw, nil
}

// Write appends one frame.
func (w *Writer) Write(f *Frame) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("archive: write after Close")
	}
	if w.m.Frames > 0 && f.Seq <= w.m.LastSeq {
		return fmt.Errorf("archive: frame sequence %d after %d: frames must come in increasing order", f.Seq, w.m.LastSeq)
	}
	w.payload = appendFrame(w.payload[:0], f)
	if len(w.payload) > MaxRecord {
		return fmt.Errorf("archive: frame %d is %d bytes encoded, more than %d", f.Seq, len(w.payload), MaxRecord)
	}
	if err := w.record(recFrame, w.payload); err != nil {
		return err
	}
	w.sum.Write(w.payload)
	if w.m.Frames == 0 {
		w.m.FirstSeq, w.m.FirstTime = f.Seq, f.Time.UTC()
	}
	w.m.Frames++
	w.m.LastSeq, w.m.LastTime = f.Seq, f.Time.UTC()
	w.m.DataBytes += uint64(len(f.Data))
	if len(w.m.Subjects) < 4096 { // bounded: partitioned subjects are few
		w.m.Subjects[f.Subject]++
	}
	return nil
}

// record writes one record.
func (w *Writer) record(typ byte, payload []byte) error {
	w.rec = append(w.rec[:0], typ)
	w.rec = binary.AppendUvarint(w.rec, uint64(len(payload)))
	w.rec = append(w.rec, payload...)
	w.rec = binary.BigEndian.AppendUint32(w.rec, crc32.Checksum(append([]byte{typ}, payload...), crcTable))
	w.m.RecordBytes += uint64(len(w.rec))
	if _, err := w.enc.Write(w.rec); err != nil {
		w.err = fmt.Errorf("archive: write: %w", err)
		return w.err
	}
	return nil
}

// Manifest is what has been written so far (complete after Close).
func (w *Writer) Manifest() Manifest { return w.m }

// CompressedBytes is how many bytes reached the underlying writer so far.
func (w *Writer) CompressedBytes() int64 { return w.out.n }

// Close writes the manifest and ends the zstd stream; it does not close
// the underlying writer.
func (w *Writer) Close() (Manifest, error) {
	if w.err != nil {
		return w.m, w.err
	}
	if w.closed {
		return w.m, nil
	}
	w.closed = true
	w.m.SHA256 = hex.EncodeToString(w.sum.Sum(nil))
	b, err := json.Marshal(w.m)
	if err != nil {
		return w.m, fmt.Errorf("archive: manifest: %w", err)
	}
	if err := w.record(recManifest, b); err != nil {
		return w.m, err
	}
	if err := w.enc.Close(); err != nil {
		w.err = fmt.Errorf("archive: write: %w", err)
		return w.m, w.err
	}
	return w.m, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Reader reads an archive frame by frame, checking every record.
type Reader struct {
	in     *countingReader
	dec    *zstd.Decoder
	br     *bufio.Reader
	off    int64 // content offset of the next record
	h      Header
	m      *Manifest
	frames uint64
	last   uint64 // last frame's sequence
	sum    hash.Hash
	buf    []byte
	f      Frame
	err    error
}

// NewReader opens an archive and reads its header. A file that is not an
// archive, or of an unknown version, is an error.
func NewReader(r io.Reader) (*Reader, error) {
	in := &countingReader{r: r}
	dec, err := zstd.NewReader(in, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(4*MaxRecord), zstd.WithDecoderMaxWindow(8<<20))
	if err != nil {
		return nil, fmt.Errorf("archive: zstd: %w", err)
	}
	ar, err := newContentReader(in, dec)
	if err != nil {
		dec.Close()
		return nil, err
	}
	ar.dec = dec
	return ar, nil
}

// newContentReader reads the decompressed content; in counts the file's bytes.
func newContentReader(in *countingReader, content io.Reader) (*Reader, error) {
	ar := &Reader{in: in, br: bufio.NewReaderSize(content, 64<<10), sum: sha256.New()}
	typ, payload, err := ar.record()
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) && ce.ContentOffset == 0 && ce.Frame == 0 {
			return nil, fmt.Errorf("archive: not a medpipe archive (or its start is damaged): %w", err)
		}
		return nil, err
	}
	if typ != recHeader {
		return nil, ar.corrupt(0, fmt.Errorf("first record is %q, want the header", typ))
	}
	if err := json.Unmarshal(payload, &ar.h); err != nil || ar.h.Format != Format {
		return nil, ar.corrupt(0, errors.New("header record is not a medpipe archive header"))
	}
	if ar.h.Version != Version {
		return nil, fmt.Errorf("archive: version %d, this medpipe reads version %d", ar.h.Version, Version)
	}
	return ar, nil
}

// Header is the archive's header.
func (r *Reader) Header() Header { return r.h }

// Manifest is the archive's manifest, once Next has returned io.EOF.
func (r *Reader) Manifest() (Manifest, bool) {
	if r.m == nil {
		return Manifest{}, false
	}
	return *r.m, true
}

// Frames is how many frames were read so far.
func (r *Reader) Frames() uint64 { return r.frames }

// Next returns the next frame, valid until the following call. At the end
// it checks the manifest against what was read and returns io.EOF; damage
// is a *CorruptError saying where.
func (r *Reader) Next() (*Frame, error) {
	if r.err != nil {
		return nil, r.err
	}
	start := r.off
	typ, payload, err := r.record()
	if err != nil {
		r.err = err
		return nil, err
	}
	switch typ {
	case recFrame:
		if err := parseFrame(payload, &r.f); err != nil {
			return nil, r.fail(start, err)
		}
		if r.frames > 0 && r.f.Seq <= r.last {
			return nil, r.fail(start, fmt.Errorf("sequence %d after %d", r.f.Seq, r.last))
		}
		r.sum.Write(payload)
		r.frames++
		r.last = r.f.Seq
		return &r.f, nil
	case recManifest:
		var m Manifest
		if err := json.Unmarshal(payload, &m); err != nil {
			return nil, r.fail(start, fmt.Errorf("manifest: %w", err))
		}
		if m.Frames != r.frames {
			return nil, r.fail(start, fmt.Errorf("manifest counts %d frames, the archive holds %d", m.Frames, r.frames))
		}
		if got := hex.EncodeToString(r.sum.Sum(nil)); got != m.SHA256 {
			return nil, r.fail(start, errors.New("manifest checksum does not match the frames"))
		}
		if m.Frames > 0 && m.LastSeq != r.last {
			return nil, r.fail(start, fmt.Errorf("manifest ends at sequence %d, the frames at %d", m.LastSeq, r.last))
		}
		// Nothing may follow the manifest.
		if _, err := r.br.ReadByte(); err != io.EOF {
			if err == nil {
				err = errors.New("data after the manifest")
			}
			return nil, r.fail(r.off, err)
		}
		r.m = &m
		r.err = io.EOF
		return nil, io.EOF
	}
	return nil, r.fail(start, fmt.Errorf("unknown record type 0x%02x", typ))
}

// record reads one record and checks its CRC.
func (r *Reader) record() (byte, []byte, error) {
	start := r.off
	typ, err := r.br.ReadByte()
	if err != nil {
		if err == io.EOF {
			err = fmt.Errorf("the archive ends after %d frames without its manifest (truncated)", r.frames)
		}
		return 0, nil, r.corrupt(start, err)
	}
	n, err := binary.ReadUvarint(r.br)
	if err != nil {
		return 0, nil, r.corrupt(start, fmt.Errorf("record length: %w", noEOF(err)))
	}
	if n > MaxRecord {
		return 0, nil, r.corrupt(start, fmt.Errorf("record of %d bytes, more than %d", n, MaxRecord))
	}
	if cap(r.buf) < int(n)+5 {
		r.buf = make([]byte, int(n)+5)
	}
	r.buf = r.buf[:int(n)+5]
	r.buf[0] = typ
	if _, err := io.ReadFull(r.br, r.buf[1:]); err != nil {
		return 0, nil, r.corrupt(start, fmt.Errorf("record: %w", noEOF(err)))
	}
	body := r.buf[:n+1]
	want := binary.BigEndian.Uint32(r.buf[n+1:])
	if crc32.Checksum(body, crcTable) != want {
		return 0, nil, r.corrupt(start, errors.New("record checksum mismatch"))
	}
	r.off = start + 1 + int64(uvarintLen(n)) + int64(n) + 4
	return typ, body[1:], nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func uvarintLen(n uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], n)
}

func (r *Reader) corrupt(off int64, err error) *CorruptError {
	return &CorruptError{Frame: r.frames, FileOffset: r.in.n, ContentOffset: off, Err: err}
}

func (r *Reader) fail(off int64, err error) error {
	r.err = r.corrupt(off, err)
	return r.err
}

// Close releases the decoder.
func (r *Reader) Close() {
	if r.dec != nil {
		r.dec.Close()
	}
}

// Verify reads a whole archive and checks every record and the manifest.
func Verify(src io.Reader) (Header, Manifest, error) {
	r, err := NewReader(src)
	if err != nil {
		return Header{}, Manifest{}, err
	}
	defer r.Close()
	for {
		if _, err := r.Next(); err != nil {
			if err == io.EOF {
				m, _ := r.Manifest()
				return r.h, m, nil
			}
			return r.h, Manifest{}, err
		}
	}
}
