package decrypt

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/medpipe/medpipe/wire"
)

// checkpoint is a partition's v2 marks as the mark bucket stores them
// under checkpointKey: every device's mark (per key generation) whose
// frames' readings are stored, and the READINGS sequence up to which the
// partition's readings are all in it.
type checkpoint struct {
	writer                uint64 // the load that wrote it (see partState.writer)
	partitions, partition int
	covered               uint64
	marks                 map[markID]mark
}

// The checkpoint's binary layout, version 1 (integers unsigned LEB128
// varints unless said otherwise):
//
//	"MCK" 0x01 | writer (8 bytes, little-endian) | partitions | partition |
//	covered | count | count × entry
//	entry: len device | device | len gen | gen | seq | raw | lastSeq |
//	       lastRaw | recv (signed varint, Unix ns) | n (1 byte, ≤ 16) |
//	       n × window word, complemented
//
// The window is stored complemented, its bits below sequence 0 cleared and
// its trailing zero words dropped: a device that sends in order has every
// bit of its window set, so its entry carries no window word at all.
var checkpointMagic = []byte{'M', 'C', 'K', 1}

// Bounds the decoder enforces.
const (
	maxGenLen     = 64
	maxDeviceLen  = 255 // then wire.ValidID
	maxPartitions = 1024
	minEntryLen   = 2 + 1 + 6 + 1 // two lengths, a one-byte device, six varints, n
)

var errCheckpoint = errors.New("decrypt: malformed mark checkpoint")

// encodeCheckpoint appends cp's binary form to dst.
func encodeCheckpoint(dst []byte, cp *checkpoint) []byte {
	dst = append(dst, checkpointMagic...)
	dst = binary.LittleEndian.AppendUint64(dst, cp.writer)
	dst = binary.AppendUvarint(dst, uint64(cp.partitions))
	dst = binary.AppendUvarint(dst, uint64(cp.partition))
	dst = binary.AppendUvarint(dst, cp.covered)
	dst = binary.AppendUvarint(dst, uint64(len(cp.marks)))
	for id, m := range cp.marks {
		dst = binary.AppendUvarint(dst, uint64(len(id.device)))
		dst = append(dst, id.device...)
		dst = binary.AppendUvarint(dst, uint64(len(id.gen)))
		dst = append(dst, id.gen...)
		dst = binary.AppendUvarint(dst, m.seq)
		dst = binary.AppendUvarint(dst, m.raw)
		dst = binary.AppendUvarint(dst, m.lastSeq)
		dst = binary.AppendUvarint(dst, m.lastRaw)
		dst = binary.AppendVarint(dst, m.recv)
		inv := m.missing()
		n := windowWords
		for n > 0 && inv[n-1] == 0 {
			n--
		}
		dst = append(dst, byte(n))
		for _, w := range inv[:n] {
			dst = binary.AppendUvarint(dst, w)
		}
	}
	return dst
}

// missing is the complement of the mark's window, with the bits of
// sequence numbers below 0 (never reachable) cleared.
func (m mark) missing() window {
	var inv window
	for i, w := range m.seen {
		inv[i] = ^w
	}
	if m.seq < ReplayWindow-1 {
		first := m.seq + 1 // bit k is sequence m.seq-k: from here on, below 0
		inv[first/64] &= 1<<(first%64) - 1
		for i := first/64 + 1; i < windowWords; i++ {
			inv[i] = 0
		}
	}
	return inv
}

// decodeCheckpoint reads what encodeCheckpoint wrote.
func decodeCheckpoint(b []byte) (checkpoint, error) {
	var cp checkpoint
	if len(b) < len(checkpointMagic)+8 || string(b[:len(checkpointMagic)]) != string(checkpointMagic) {
		return cp, fmt.Errorf("%w: not a version 1 checkpoint", errCheckpoint)
	}
	d := ckptReader{b: b[len(checkpointMagic):]}
	cp.writer = binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	parts, part := d.uvarint(), d.uvarint()
	cp.covered = d.uvarint()
	count := d.uvarint()
	if d.err != nil {
		return cp, d.err
	}
	if parts == 0 || parts > maxPartitions || part >= parts {
		return cp, fmt.Errorf("%w: partition %d of %d", errCheckpoint, part, parts)
	}
	cp.partitions, cp.partition = int(parts), int(part)
	if count > uint64(len(d.b)/minEntryLen) {
		return cp, fmt.Errorf("%w: %d entries in %d bytes", errCheckpoint, count, len(d.b))
	}
	cp.marks = make(map[markID]mark, count)
	for range count {
		id := markID{device: d.str(maxDeviceLen), gen: d.str(maxGenLen)}
		m := mark{seq: d.uvarint(), raw: d.uvarint(), lastSeq: d.uvarint(), lastRaw: d.uvarint(), rev: 1}
		m.recv = d.varint()
		n := d.byte()
		if d.err == nil && n > windowWords {
			d.err = fmt.Errorf("%w: %d window words", errCheckpoint, n)
		}
		var inv window
		for i := 0; i < int(n) && d.err == nil; i++ {
			inv[i] = d.uvarint()
		}
		if d.err != nil {
			return cp, d.err
		}
		for i := range inv {
			m.seen[i] = ^inv[i]
		}
		if !wire.ValidID(id.device) {
			return cp, fmt.Errorf("%w: device id %q", errCheckpoint, id.device)
		}
		if _, dup := cp.marks[id]; dup {
			return cp, fmt.Errorf("%w: %s listed twice", errCheckpoint, id.device)
		}
		cp.marks[id] = m
	}
	if len(d.b) != 0 {
		return cp, fmt.Errorf("%w: %d trailing bytes", errCheckpoint, len(d.b))
	}
	return cp, nil
}

// ckptReader reads varints and strings, keeping the first error.
type ckptReader struct {
	b   []byte
	err error
}

func (d *ckptReader) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: truncated", errCheckpoint)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// varint undoes binary.AppendVarint's zig-zag encoding of a uvarint.
func (d *ckptReader) varint() int64 {
	u := d.uvarint()
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

func (d *ckptReader) byte() byte {
	if d.err == nil && len(d.b) == 0 {
		d.err = fmt.Errorf("%w: truncated", errCheckpoint)
	}
	if d.err != nil {
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *ckptReader) str(maxLen int) string {
	n := d.uvarint()
	if d.err == nil && (n > uint64(maxLen) || n > uint64(len(d.b))) {
		d.err = fmt.Errorf("%w: string of %d bytes", errCheckpoint, n)
	}
	if d.err != nil {
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
