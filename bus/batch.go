package bus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
)

// readingBatchV1 starts a READINGS message that holds several readings of
// one partition (AppendReadingBatch). Storing, delivering and acknowledging
// a message costs JetStream and both stages about the same whatever its
// size, so under load decrypt stores what a partition has ready in one.
const readingBatchV1 = 0xBB

// readingsBatchToken is the last subject token of a READINGS batch: no
// device id can be it (wire.ValidID), so a subscriber of one device's
// subject never takes a batch for a reading of that device.
const readingsBatchToken = "~batch"

// ReadingsBatchSubject is the READINGS subject of partition p's batches.
func ReadingsBatchSubject(p int) string {
	return SubjectReadingsPrefix + strconv.Itoa(p) + "." + readingsBatchToken
}

// KeyedReading is a reading as READINGS holds it, with the generation of
// the key that opened it: set for a v2 reading (HeaderKeyGen on a message
// of its own), empty for a legacy one.
type KeyedReading struct {
	*Reading
	KeyGen string
}

// AppendReadingBatch appends a READINGS batch body to dst: the version
// byte, the reading count, then for each reading its key generation and
// its compact body (AppendReading), both length-prefixed.
func AppendReadingBatch(dst []byte, rs []KeyedReading) ([]byte, error) {
	dst = append(dst, readingBatchV1)
	dst = binary.AppendUvarint(dst, uint64(len(rs)))
	for _, r := range rs {
		dst = appendString(dst, r.KeyGen)
		// The body is written in place behind room for its length, which
		// is moved up once known: a reading is not encoded twice.
		at := len(dst)
		dst = append(dst, make([]byte, binary.MaxVarintLen64)...)
		var err error
		if dst, err = AppendReading(dst, r.Reading); err != nil {
			return dst, err
		}
		body := len(dst) - at - binary.MaxVarintLen64
		n := binary.PutUvarint(dst[at:], uint64(body))
		copy(dst[at+n:], dst[at+binary.MaxVarintLen64:])
		dst = dst[:at+n+body]
	}
	return dst, nil
}

// IsReadingBatch reports whether a READINGS message's body is a batch.
func IsReadingBatch(data []byte) bool { return len(data) > 0 && data[0] == readingBatchV1 }

// ErrReadingBatch marks a READINGS batch body that cannot be read.
var ErrReadingBatch = errors.New("bus: READINGS batch")

// DecodeReadings decodes a READINGS message, a batch or a single reading
// (whose key generation is its header's HeaderKeyGen). The readings that
// decode and check are returned in order; an error names each one that
// does not, so that one bad reading does not cost the others. A batch
// whose framing is broken returns no readings.
func DecodeReadings(data []byte, h nats.Header) ([]KeyedReading, error) {
	if !IsReadingBatch(data) {
		r, err := UnmarshalReading(data)
		if err != nil {
			return nil, err
		}
		return []KeyedReading{{Reading: r, KeyGen: h.Get(HeaderKeyGen)}}, nil
	}
	d := bodyReader{b: data[1:]}
	n := d.uvarint()
	// Each reading takes at least its two length bytes: a count beyond
	// that is a lie, refused before anything is allocated for it.
	if d.err != nil || n > uint64(len(d.b))/2 {
		return nil, fmt.Errorf("%w: bad reading count", ErrReadingBatch)
	}
	out := make([]KeyedReading, 0, n)
	var errs []error
	for i := range n {
		gen := d.string()
		body := d.bytes()
		if d.err != nil {
			return nil, fmt.Errorf("%w: reading %d of %d: %w", ErrReadingBatch, i+1, n, d.err)
		}
		r, err := UnmarshalReading(body)
		if err != nil {
			errs = append(errs, fmt.Errorf("reading %d of %d: %w", i+1, n, err))
			continue
		}
		out = append(out, KeyedReading{Reading: r, KeyGen: gen})
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last reading", ErrReadingBatch, len(d.b))
	}
	return out, errors.Join(errs...)
}
