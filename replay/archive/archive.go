// Package archive reads and writes medpipe archive files: frames of a
// JetStream stream (RAW: device frames still encrypted) with all their
// headers, stream sequence and timestamp, in one zstd stream.
//
// Layout of the decompressed content: a sequence of records,
//
//	type (1 byte) | payload length (uvarint) | payload | CRC-32C of type and payload (4 bytes, big endian)
//
// the first an 'H' header (JSON: format, version, stream, origin, …), then
// one 'F' record per frame, and last an 'M' manifest (JSON: sequence and
// time range, counts, SHA-256 of every frame payload). The per-record CRC
// locates damage to one frame; the manifest detects a truncated file and
// a lost or reordered frame. Writer and Reader work in constant memory
// whatever the archive's size.
package archive

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
	"time"
)

// Format and Version identify the file format in the header record.
const (
	Format  = "medpipe-archive"
	Version = 1
)

// Record types.
const (
	recHeader   = 'H'
	recFrame    = 'F'
	recManifest = 'M'
)

// MaxRecord bounds one record's payload: far above a NATS message (1 MiB by
// default) and small enough that a damaged length cannot make the reader
// allocate without limit.
const MaxRecord = 8 << 20

// FileExt is the customary file name extension.
const FileExt = ".mpa.zst"

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Header is the archive's first record.
type Header struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	// Stream is the stream the frames were read from (RAW).
	Stream string `json:"stream"`
	// Origin identifies that stream instance (name and creation time), so
	// that importing the same frames twice stores them once.
	Origin string `json:"origin,omitempty"`
	// Partitions is the stream's partition count (bus metadata).
	Partitions int `json:"partitions,omitempty"`
	// Created is when the archive was written.
	Created time.Time `json:"created"`
	// Selection describes what was asked for (free text, e.g. the time range).
	Selection string `json:"selection,omitempty"`
}

// Manifest is the archive's last record: what it holds.
type Manifest struct {
	Stream    string    `json:"stream"`
	Frames    uint64    `json:"frames"`
	FirstSeq  uint64    `json:"first_seq,omitempty"`
	LastSeq   uint64    `json:"last_seq,omitempty"`
	FirstTime time.Time `json:"first_time,omitzero"`
	LastTime  time.Time `json:"last_time,omitzero"`
	// DataBytes is the frames' payload bytes; RecordBytes everything
	// before compression.
	DataBytes   uint64 `json:"data_bytes"`
	RecordBytes uint64 `json:"record_bytes"`
	// Subjects counts frames per subject.
	Subjects map[string]uint64 `json:"subjects,omitempty"`
	// SHA256 is the hex SHA-256 over every frame record's payload, in order.
	SHA256 string `json:"sha256"`
}

// Frame is one stored message.
type Frame struct {
	Seq     uint64              // stream sequence
	Time    time.Time           // stream timestamp
	Subject string              // subject it was stored under
	Header  map[string][]string // every header, as stored (a nats.Header)
	Data    []byte              // payload
}

// CorruptError reports damage: which frame (0-based index of the frame
// record being read; the number of good frames before it) and where in the
// file (compressed bytes read when it was found, and the offset of the
// damaged record in the decompressed content).
type CorruptError struct {
	Frame         uint64 // frames read intact before the damage
	FileOffset    int64  // compressed bytes consumed when the damage was found
	ContentOffset int64  // offset of the damaged record in the decompressed content
	Err           error
}

// ErrCorrupt is matched by every CorruptError (errors.Is).
var ErrCorrupt = errors.New("archive: corrupt")

func (e *CorruptError) Error() string {
	return fmt.Sprintf("archive: corrupt at frame %d (content offset %d, file offset ≤ %d): %v", e.Frame, e.ContentOffset, e.FileOffset, e.Err)
}

func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }

// appendFrame encodes f as a frame record payload:
//
//	seq uvarint | unix nanos varint | subject | header count uvarint | (name | value)… | data
//
// where strings and data are uvarint length + bytes. Header names are
// sorted so that the same frame always encodes the same.
func appendFrame(dst []byte, f *Frame) []byte {
	dst = binary.AppendUvarint(dst, f.Seq)
	dst = binary.AppendVarint(dst, f.Time.UnixNano())
	dst = appendBytes(dst, f.Subject)
	names := make([]string, 0, len(f.Header))
	n := 0
	for k, vs := range f.Header {
		names = append(names, k)
		n += len(vs)
	}
	sort.Strings(names)
	dst = binary.AppendUvarint(dst, uint64(n))
	for _, k := range names {
		for _, v := range f.Header[k] {
			dst = appendBytes(dst, k)
			dst = appendBytes(dst, v)
		}
	}
	return appendBytes(dst, f.Data)
}

func appendBytes[T string | []byte](dst []byte, b T) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// parseFrame decodes a frame record payload into f; f.Data aliases b.
func parseFrame(b []byte, f *Frame) error {
	d := decoder{b: b}
	f.Seq = d.uvarint()
	f.Time = time.Unix(0, d.varint()).UTC()
	f.Subject = string(d.bytes())
	n := d.uvarint()
	if n > uint64(len(d.b)) { // each header takes at least two bytes
		return fmt.Errorf("frame record: %d headers in %d bytes", n, len(d.b))
	}
	f.Header = make(map[string][]string, min(n, 16))
	for range n {
		k := string(d.bytes())
		v := string(d.bytes())
		if d.err != nil {
			break
		}
		f.Header[k] = append(f.Header[k], v)
	}
	f.Data = d.bytes()
	if d.err != nil {
		return fmt.Errorf("frame record: %w", d.err)
	}
	if len(d.b) != 0 {
		return fmt.Errorf("frame record: %d bytes left over", len(d.b))
	}
	return nil
}

type decoder struct {
	b   []byte
	err error
}

var errShort = errors.New("truncated field")

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errShort
		return nil
	}
	b := d.b[:n:n]
	d.b = d.b[n:]
	return b
}
