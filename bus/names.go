package bus

import (
	"hash/fnv"
	"strconv"
	"strings"
)

// Stream names.
const (
	StreamRaw        = "RAW"        // frames as devices sent them, still encrypted
	StreamReadings   = "READINGS"   // decrypted, validated readings
	StreamDeadLetter = "DEADLETTER" // frames that could not become readings, with a reason
)

// Subject layout. RAW and READINGS are partitioned so that one consumer per
// partition, pinned to one worker at a time, keeps each connection's and each
// device's messages in order while workers scale out.
const (
	SubjectRawPrefix        = "medpipe.raw."        // + partition
	SubjectReadingsPrefix   = "medpipe.readings."   // + partition + "." + device
	SubjectDeadLetterPrefix = "medpipe.deadletter." // + reason
)

// Header names carried by RAW messages (and copied to DEADLETTER).
const (
	HeaderConn     = "Medpipe-Conn"     // connection id, unique across edges and restarts
	HeaderFrameSeq = "Medpipe-Frame"    // 1-based frame number within the connection
	HeaderRemote   = "Medpipe-Remote"   // device address as the edge saw it (host:port)
	HeaderLocal    = "Medpipe-Local"    // the edge's local address of the connection
	HeaderReceived = "Medpipe-Received" // RFC 3339 time the edge read the frame's end
	HeaderProtocol = "Medpipe-Protocol" // wire protocol of the frame, e.g. ProtocolLegacy
	HeaderDevice   = "Medpipe-Device"   // device id, where known
	HeaderReason   = "Medpipe-Reason"   // DEADLETTER: why the frame was rejected (a Reason)
	HeaderError    = "Medpipe-Error"    // DEADLETTER: the error text (never secrets)
	HeaderRawSeq   = "Medpipe-Raw-Seq"  // DEADLETTER: the frame's RAW stream sequence
	// HeaderEdge names the edge instance that received a frame: decrypt
	// sends the device's reply to AckSubject(edge).
	HeaderEdge = "Medpipe-Edge"
	// HeaderResend marks a v2 frame the edge stores again because RAW
	// already held it (a device's resend within the duplicate window): it
	// asks decrypt for the verified ACK the device is still owed.
	HeaderResend = "Medpipe-Resend"
	// HeaderKeyGen carries, on a v2 reading in READINGS, the generation of
	// the device key that opened its frame: decrypt folds READINGS into its
	// replay marks, which are scoped per key generation.
	HeaderKeyGen = "Medpipe-Key-Gen"
	// HeaderPinID is the header JetStream sets on messages delivered to a
	// priority group's pinned client: it changes whenever a partition
	// moves to another worker.
	HeaderPinID = "Nats-Pin-Id"
)

// IsControlHeader reports whether a header is one of JetStream's (Nats-*:
// a message id, an expected stream, a TTL, a pin id). Copied onto another
// publish, it would act on that publish, so copies leave it out.
func IsControlHeader(name string) bool {
	return len(name) >= 5 && strings.EqualFold(name[:5], "Nats-")
}

// SubjectAckPrefix + edge instance id is the core NATS subject on which
// decrypt sends v2 replies (ACK, REFUSED: frames made with the device's
// ACK key, which the edge never holds) for the edge to relay to the
// device's connection, named by HeaderConn. Publishers: decrypt only;
// subscribers: the edge whose id it is (ingest subscribes to
// SubjectAckPrefix + its own id).
const SubjectAckPrefix = "medpipe.ack."

// AckSubject is the reply subject of edge instance edge.
func AckSubject(edge string) string { return SubjectAckPrefix + edge }

// V2MsgID is the Nats-Msg-Id of a v2 frame in RAW: device, sequence
// number and the frame's GCM tag, in hex. The tag is
// what only the genuine frame has: a sender without the device's key
// cannot take a genuine frame's (device, seq) place in RAW's duplicate
// window, while a byte-identical resend of the genuine frame is still
// stored once.
func V2MsgID(device string, seq uint64, tag []byte) string {
	const hexDigits = "0123456789abcdef"
	b := make([]byte, 0, len(device)+1+20+1+32)
	b = append(b, device...)
	b = append(b, ':')
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, ':')
	for _, c := range tag {
		b = append(b, hexDigits[c>>4], hexDigits[c&15])
	}
	return string(b)
}

// Protocol values for HeaderProtocol.
const (
	ProtocolLegacy = "legacy"
	ProtocolV2     = "v2"
)

// Reason says why a frame went to DEADLETTER.
type Reason string

// Dead-letter reasons.
const (
	ReasonUnknownDevice Reason = "unknown_device" // no key opens the frame
	ReasonAmbiguous     Reason = "ambiguous"      // more than one key opens the frame
	ReasonMalformed     Reason = "malformed"      // not hex blocks, or missing headers
	ReasonInvalid       Reason = "invalid"        // decrypts, but is not a valid reading
	ReasonRevoked       Reason = "revoked"        // the device's key was revoked
	ReasonTampered      Reason = "tampered"       // v2: the authentication tag does not match
	ReasonReplayed      Reason = "replayed"       // v2: sequence number at or below the device's high-water mark
	ReasonDowngrade     Reason = "downgrade"      // a legacy frame from a device pinned to v2
	// ReasonDuplicate is a v2 frame accepted before, resent: it is
	// acknowledged again and never dead-lettered (replay counts it).
	ReasonDuplicate Reason = "duplicate"
)

// DefaultPartitions is the number of RAW and READINGS partitions a new
// installation gets; it bounds how many workers of one stage share the load.
const DefaultPartitions = 16

// Partition maps a key (connection id for RAW, device id for READINGS) to
// one of n partitions with FNV-1a.
func Partition(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// RawSubject is the RAW subject of partition p.
func RawSubject(p int) string { return SubjectRawPrefix + strconv.Itoa(p) }

// ReadingsSubject is the READINGS subject of device id in partition p.
func ReadingsSubject(p int, device string) string {
	return SubjectReadingsPrefix + strconv.Itoa(p) + "." + device
}

// ReadingsPartitionFilter selects every device of READINGS partition p.
func ReadingsPartitionFilter(p int) string {
	return SubjectReadingsPrefix + strconv.Itoa(p) + ".>"
}

// DeadLetterSubject is the DEADLETTER subject for reason r.
func DeadLetterSubject(r Reason) string { return SubjectDeadLetterPrefix + string(r) }
