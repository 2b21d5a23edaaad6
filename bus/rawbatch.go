package bus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// ProtocolBatch is the HeaderProtocol of a RAW message that holds several
// frames of one partition, legacy and v2 (AppendRawBatch): storing,
// delivering and acknowledging a message costs JetStream and both stages
// about the same whatever its size, so under load the edge stores what a
// partition has ready in one. Each frame keeps in the body what its
// headers would have said alone (RawFrame); the message's own headers are
// those common to its frames (HeaderEdge, HeaderProtocol, and
// HeaderReceived of its first frame).
const ProtocolBatch = "batch"

// MaxRawBatchFrames is the most frames a RAW batch may hold: decrypt tells
// a batched frame from every other by the batch's RAW sequence and the
// frame's index, which it keeps in 16 bits.
const MaxRawBatchFrames = 4096

// rawBatchBody starts a RAW batch body. It is no hex digit, so no legacy
// frame, which is hex text, begins with it, nor a v2 frame's first byte.
const rawBatchBody = 0xBB

// A batched frame's protocol, as its record's first byte.
const (
	rawFrameLegacy = 0
	rawFrameV2     = 1
)

// RawFrame is one frame of a RAW batch and what the edge's headers would
// have said of it in a message of its own.
type RawFrame struct {
	Protocol      string    // HeaderProtocol: ProtocolLegacy or ProtocolV2
	Device        string    // HeaderDevice: a v2 frame's device ("" for legacy)
	Conn          string    // HeaderConn
	Seq           uint64    // HeaderFrameSeq
	Received      time.Time // HeaderReceived
	Remote, Local string    // HeaderRemote, HeaderLocal
	Data          []byte    // the frame, as the device sent it
}

// ErrRawFrameProtocol marks a frame AppendRawFrame cannot batch: its
// protocol is neither legacy nor v2.
var ErrRawFrameProtocol = errors.New("bus: a RAW batch holds legacy and v2 frames only")

// AppendRawFrame appends one frame's record of a RAW batch body to dst;
// AppendRawBatch makes the body of n such records.
func AppendRawFrame(dst []byte, f *RawFrame) ([]byte, error) {
	switch f.Protocol {
	case ProtocolLegacy:
		dst = append(dst, rawFrameLegacy)
	case ProtocolV2:
		dst = append(dst, rawFrameV2)
	default:
		return dst, fmt.Errorf("%w: %q", ErrRawFrameProtocol, f.Protocol)
	}
	dst = appendString(dst, f.Device)
	dst = appendString(dst, f.Conn)
	dst = binary.AppendUvarint(dst, f.Seq)
	dst = appendTime(dst, f.Received)
	dst = appendString(dst, f.Remote)
	dst = appendString(dst, f.Local)
	dst = binary.AppendUvarint(dst, uint64(len(f.Data)))
	return append(dst, f.Data...), nil
}

// AppendRawBatch appends to dst a RAW batch body of n frame records, as
// AppendRawFrame wrote them one after the other into records.
func AppendRawBatch(dst []byte, n int, records []byte) []byte {
	dst = append(dst, rawBatchBody)
	dst = binary.AppendUvarint(dst, uint64(n))
	return append(dst, records...)
}

// IsRawBatch reports whether a RAW message is a batch of frames.
func IsRawBatch(h nats.Header) bool { return h.Get(HeaderProtocol) == ProtocolBatch }

// ErrRawBatch marks a RAW batch body that cannot be read.
var ErrRawBatch = errors.New("bus: RAW batch")

// minRawRecord is the fewest bytes a frame record takes: the protocol
// byte, six length or number bytes and the receive time's one.
const minRawRecord = 8

// DecodeRawBatch decodes a RAW batch body. The frames' Data alias data.
func DecodeRawBatch(data []byte) ([]RawFrame, error) {
	if len(data) == 0 || data[0] != rawBatchBody {
		return nil, fmt.Errorf("%w: not a batch body", ErrRawBatch)
	}
	d := bodyReader{b: data[1:]}
	n := d.uvarint()
	// A count beyond what the bytes could hold is a lie, refused before
	// anything is allocated for it.
	if d.err != nil || n == 0 || n > uint64(len(d.b))/minRawRecord || n > MaxRawBatchFrames {
		return nil, fmt.Errorf("%w: bad frame count", ErrRawBatch)
	}
	out := make([]RawFrame, n)
	for i := range out {
		f := &out[i]
		if len(d.b) == 0 {
			return nil, fmt.Errorf("%w: frame %d of %d: %w", ErrRawBatch, i+1, n, errShortBody)
		}
		switch d.b[0] {
		case rawFrameLegacy:
			f.Protocol = ProtocolLegacy
		case rawFrameV2:
			f.Protocol = ProtocolV2
		default:
			return nil, fmt.Errorf("%w: frame %d of %d: protocol %d", ErrRawBatch, i+1, n, d.b[0])
		}
		d.b = d.b[1:]
		f.Device = d.string()
		if (f.Device == "") != (f.Protocol == ProtocolLegacy) {
			return nil, fmt.Errorf("%w: frame %d of %d: a %s frame with device %q", ErrRawBatch, i+1, n, f.Protocol, f.Device)
		}
		f.Conn = d.string()
		f.Seq = d.uvarint()
		f.Received = d.time()
		f.Remote = d.string()
		f.Local = d.string()
		f.Data = d.bytes()
		if d.err != nil {
			return nil, fmt.Errorf("%w: frame %d of %d: %w", ErrRawBatch, i+1, n, d.err)
		}
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last frame", ErrRawBatch, len(d.b))
	}
	return out, nil
}

// Header returns the headers a RAW message of f alone would carry: those
// of its batch (batch), but for the ones that describe one frame, and its
// own. A JetStream control header of the batch's (its message id) is left
// out: it names the batch.
func (f *RawFrame) Header(batch nats.Header) nats.Header {
	h := make(nats.Header, len(batch)+5)
	for k, v := range batch {
		if !IsControlHeader(k) {
			h[k] = v
		}
	}
	h[HeaderConn] = []string{f.Conn}
	h[HeaderFrameSeq] = []string{strconv.FormatUint(f.Seq, 10)}
	h[HeaderReceived] = []string{f.Received.UTC().Format(time.RFC3339Nano)}
	h[HeaderRemote] = []string{f.Remote}
	h[HeaderLocal] = []string{f.Local}
	h[HeaderProtocol] = []string{f.Protocol}
	if f.Device != "" {
		h[HeaderDevice] = []string{f.Device}
	}
	return h
}
