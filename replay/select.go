// Package replay reads stored ciphertext back: it selects frames of RAW
// (or of an archive file) by time, sequence and device, opens them through
// decrypt's own code path and key index, and writes the readings to MQTT
// under a separate prefix, or as JSON lines or CSV. It also exports RAW to
// archive files and imports them back (see package replay/archive).
//
// Replay reads RAW with an ephemeral ordered consumer: the durable
// consumers of the live stages are never touched.
package replay

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/replay/archive"
)

// Selection says which frames to replay or export. Zero fields select everything.
type Selection struct {
	// Since and Until bound the time the edge received a frame (its
	// Medpipe-Received header; the stream timestamp when that is missing):
	// Since inclusive, Until exclusive.
	Since, Until time.Time
	// FromSeq and ToSeq bound the stream sequence (inclusive).
	FromSeq, ToSeq uint64
	// Devices are device id patterns (path.Match globs: '*', '?', '[a-z]').
	// v2 frames carry their device in a header and are skipped unread;
	// legacy frames are decrypted first (RAW knows only their connection).
	Devices []string
}

// Validate checks the patterns and ranges.
func (s *Selection) Validate() error {
	for _, p := range s.Devices {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("replay: device pattern %q: %w", p, err)
		}
	}
	if !s.Since.IsZero() && !s.Until.IsZero() && !s.Until.After(s.Since) {
		return fmt.Errorf("replay: until %s is not after since %s", s.Until.Format(time.RFC3339), s.Since.Format(time.RFC3339))
	}
	if s.ToSeq != 0 && s.ToSeq < s.FromSeq {
		return fmt.Errorf("replay: sequence range %d-%d is empty", s.FromSeq, s.ToSeq)
	}
	return nil
}

// String describes the selection (for an archive's header and logs).
func (s *Selection) String() string {
	var parts []string
	if !s.Since.IsZero() {
		parts = append(parts, "since "+s.Since.UTC().Format(time.RFC3339Nano))
	}
	if !s.Until.IsZero() {
		parts = append(parts, "until "+s.Until.UTC().Format(time.RFC3339Nano))
	}
	if s.FromSeq != 0 || s.ToSeq != 0 {
		parts = append(parts, fmt.Sprintf("seq %d-%d", s.FromSeq, s.ToSeq))
	}
	if len(s.Devices) > 0 {
		parts = append(parts, "devices "+strings.Join(s.Devices, ","))
	}
	if len(parts) == 0 {
		return "everything"
	}
	return strings.Join(parts, ", ")
}

// MatchDevice reports whether device id is selected.
func (s *Selection) MatchDevice(id string) bool {
	if len(s.Devices) == 0 {
		return true
	}
	for _, p := range s.Devices {
		if ok, _ := path.Match(p, id); ok {
			return true
		}
	}
	return false
}

// ReceivedAt is when the edge received frame f: its Medpipe-Received
// header, or the stream timestamp when that is missing or garbled.
func ReceivedAt(f *archive.Frame) time.Time {
	if v := f.Header[bus.HeaderReceived]; len(v) > 0 {
		if t, err := time.Parse(time.RFC3339Nano, v[0]); err == nil {
			return t
		}
	}
	return f.Time
}

// verdict is what the selection makes of a frame before decryption.
type verdict int

const (
	take verdict = iota // in range; decrypt it (device checked after, for legacy)
	skip                // out of range
	stop                // out of range, and so is everything after it
)

// lateness bounds how much later than the edge's receive time a frame is
// stored (clock skew, publish retries): RAW is read from Since minus it,
// and reading stops only past Until plus it.
const lateness = time.Minute

// judge applies the sequence and time ranges, and the device patterns to
// v2 frames, whose device is in the clear.
func (s *Selection) judge(f *archive.Frame) verdict {
	if s.ToSeq != 0 && f.Seq > s.ToSeq {
		return stop
	}
	if f.Seq < s.FromSeq {
		return skip
	}
	recv := ReceivedAt(f)
	if !s.Until.IsZero() && !recv.Before(s.Until) {
		// Imported frames carry old receive times under new stream
		// timestamps: stop only when both clocks are past the end.
		if recv.After(s.Until.Add(lateness)) && f.Time.After(s.Until.Add(lateness)) {
			return stop
		}
		return skip
	}
	if !s.Since.IsZero() && recv.Before(s.Since) {
		return skip
	}
	if len(s.Devices) > 0 && first(f.Header[bus.HeaderProtocol]) == bus.ProtocolV2 {
		if d := first(f.Header[bus.HeaderDevice]); d != "" && !s.MatchDevice(d) {
			return skip
		}
	}
	return take
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// ParseTime reads a --since/--until value: RFC 3339 ("2026-11-25T10:00:00Z"),
// a relative duration from now ("-2h", "-90m", "-1h30m"), or "now".
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return time.Time{}, nil
	case s == "now":
		return now, nil
	case strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+"):
		d, err := time.ParseDuration(s)
		if err != nil {
			return time.Time{}, fmt.Errorf("replay: time %q: want RFC 3339 or a duration like -2h: %w", s, err)
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("replay: time %q: want RFC 3339 (2026-11-25T10:00:00Z) or a duration like -2h", s)
	}
	return t, nil
}

// ParseSeqRange reads "FROM-TO", "FROM-" or "N" (one frame).
func ParseSeqRange(s string) (from, to uint64, err error) {
	if s == "" {
		return 0, 0, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	if from, err = parseUint(a); err != nil {
		return 0, 0, fmt.Errorf("replay: sequence range %q: %w", s, err)
	}
	if !isRange {
		return from, from, nil
	}
	if b == "" {
		return from, 0, nil
	}
	if to, err = parseUint(b); err != nil {
		return 0, 0, fmt.Errorf("replay: sequence range %q: %w", s, err)
	}
	if to < from {
		return 0, 0, fmt.Errorf("replay: sequence range %q is empty", s)
	}
	return from, to, nil
}

func parseUint(s string) (uint64, error) {
	var n uint64
	if s == "" {
		return 0, errors.New("missing number")
	}
	for _, c := range s {
		if c < '0' || c > '9' || n > (1<<64-1)/10-1 {
			return 0, errors.New("not a sequence number")
		}
		n = n*10 + uint64(c-'0')
	}
	return n, nil
}
