// Package bench measures the whole medpipe pipeline with simulated devices:
// it starts the stack (one `medpipe up` process, separate stage processes,
// or given servers), drives N devices, accounts for every reading on the
// MQTT side by device and sequence number, times each reading from the
// device's write to its MQTT arrival, and reports the figures against the
// ceilings of JetStream and MQTT measured on the same machine.
package bench

import (
	"strconv"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Ledger accounts for every reading: sent (with the time of the device's
// write), delivered, duplicated, out of order; and the end-to-end latency
// of each first delivery. Safe for concurrent use.
type Ledger struct {
	mu      sync.Mutex
	base    time.Time // sent times are kept as offsets from it
	devices []deviceBook
	byID    map[string]int
	ids     []string
	// Latency of every first delivery in the measured window, in µs.
	hist *hdrhistogram.Histogram
	// second is the per-second series since the window opened.
	second  []Second
	open    time.Time // the measured window's start; zero before it opens
	closed  bool
	counted uint64    // readings delivered inside the window
	lastAt  time.Time // the latest first delivery
}

// deviceBook is one device's account. Sequence numbers start at 1.
type deviceBook struct {
	// sent[seq-1] is when the device wrote reading seq, as 1 + nanoseconds
	// since the ledger's base (0: not written yet). Not time.Time, whose
	// location pointer would have the collector scan every reading of the
	// run in the process that timestamps arrivals.
	sent      []int64
	delivered []bool
	// early holds readings that arrived before their device goroutine got
	// to record the write (it records after Write returns): seq → arrival.
	early     map[uint64]time.Time
	last      uint64 // highest sequence delivered so far
	dups      uint64
	reordered uint64
	// firstLate is the first reading that arrived after a later one.
	firstLate uint64
}

// Second is one second of the measured window.
type Second struct {
	Delivered uint64  `json:"delivered"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	hist      *hdrhistogram.Histogram
}

// NewLedger accounts for devices named ids (index = the simulator's device
// index).
func NewLedger(ids []string) *Ledger {
	l := &Ledger{base: time.Now(), devices: make([]deviceBook, len(ids)), byID: make(map[string]int, len(ids)), ids: ids, hist: newHist()}
	for i, id := range ids {
		l.byID[id] = i
	}
	return l
}

// newHist records 1 µs to 10 minutes with 3 significant digits.
func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 600_000_000, 3) }

// Sent records that device i wrote reading seq at t.
func (l *Ledger) Sent(i int, seq uint64, t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := &l.devices[i]
	for uint64(len(d.sent)) < seq {
		d.sent = append(d.sent, 0)
		d.delivered = append(d.delivered, false)
	}
	if d.sent[seq-1] != 0 { // a v2 resend keeps the first write's time
		return
	}
	d.sent[seq-1] = 1 + int64(t.Sub(l.base))
	if at, ok := d.early[seq]; ok {
		delete(d.early, seq)
		l.deliver(d, seq, at)
	}
}

// Delivered records that reading seq of device id arrived at t. Unknown
// devices are ignored and reported false.
func (l *Ledger) Delivered(id string, seq uint64, t time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, ok := l.byID[id]
	if !ok || seq == 0 {
		return false
	}
	d := &l.devices[i]
	if seq > uint64(len(d.sent)) || d.sent[seq-1] == 0 {
		if d.early == nil {
			d.early = map[uint64]time.Time{}
		}
		if _, dup := d.early[seq]; dup {
			d.dups++
		} else {
			d.early[seq] = t
		}
		return true
	}
	l.deliver(d, seq, t)
	return true
}

// deliver records the arrival of reading seq, sent, at t.
func (l *Ledger) deliver(d *deviceBook, seq uint64, t time.Time) {
	if d.delivered[seq-1] {
		d.dups++
		return
	}
	d.delivered[seq-1] = true
	if t.After(l.lastAt) {
		l.lastAt = t
	}
	if seq < d.last {
		d.reordered++
		if d.firstLate == 0 {
			d.firstLate = seq
		}
	}
	d.last = max(d.last, seq)
	sent := l.base.Add(time.Duration(d.sent[seq-1] - 1))
	if !l.open.IsZero() && !l.closed && !sent.Before(l.open) {
		us := t.Sub(sent).Microseconds()
		_ = l.hist.RecordValue(max(us, 1))
		s := int(t.Sub(l.open) / time.Second)
		for len(l.second) <= s {
			l.second = append(l.second, Second{hist: newHist()})
		}
		l.second[s].Delivered++
		_ = l.second[s].hist.RecordValue(max(us, 1))
		l.counted++
	}
}

// LastDelivery is when the latest reading first arrived.
func (l *Ledger) LastDelivery() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastAt
}

// Open starts the measured window: latencies of readings sent from now on
// count.
func (l *Ledger) Open(t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open = t
}

// Close ends the measured window.
func (l *Ledger) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
}

// Totals is the account of every device together.
type Totals struct {
	Sent       uint64 `json:"sent"`
	Delivered  uint64 `json:"delivered"`
	Lost       uint64 `json:"lost"`
	Duplicated uint64 `json:"duplicated"`
	Reordered  uint64 `json:"reordered"`
	// LostDevices is how many devices lost at least one reading.
	LostDevices int `json:"lost_devices"`
	// LostSample names up to ten lost readings as device:seq.
	LostSample []string `json:"lost_sample,omitempty"`
	// ReorderedSample names up to ten devices' first late reading as device:seq.
	ReorderedSample []string `json:"reordered_sample,omitempty"`
}

// Totals sums the account; a reading sent and not delivered (yet) is lost.
func (l *Ledger) Totals() Totals {
	l.mu.Lock()
	defer l.mu.Unlock()
	var t Totals
	for di, d := range l.devices {
		lost := false
		for i, s := range d.sent {
			if s == 0 {
				continue
			}
			t.Sent++
			if d.delivered[i] {
				t.Delivered++
			} else {
				t.Lost++
				lost = true
				if len(t.LostSample) < 10 {
					t.LostSample = append(t.LostSample, l.ids[di]+":"+strconv.Itoa(i+1))
				}
			}
		}
		if lost {
			t.LostDevices++
		}
		t.Duplicated += d.dups
		t.Reordered += d.reordered
		if d.firstLate != 0 && len(t.ReorderedSample) < 10 {
			t.ReorderedSample = append(t.ReorderedSample, l.ids[di]+":"+strconv.FormatUint(d.firstLate, 10))
		}
	}
	return t
}

// Latency is the end-to-end latency distribution of the window, in ms.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

// Latency returns the window's percentiles.
func (l *Ledger) Latency() Latency {
	l.mu.Lock()
	defer l.mu.Unlock()
	return latencyOf(l.hist)
}

func latencyOf(h *hdrhistogram.Histogram) Latency {
	ms := func(q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }
	return Latency{Count: h.TotalCount(), P50: ms(50), P90: ms(90), P99: ms(99), P999: ms(99.9), Max: float64(h.Max()) / 1000}
}

// Series returns the per-second deliveries and latency percentiles.
func (l *Ledger) Series() []Second {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Second, len(l.second))
	for i, s := range l.second {
		out[i] = Second{Delivered: s.Delivered, P50: float64(s.hist.ValueAtQuantile(50)) / 1000, P99: float64(s.hist.ValueAtQuantile(99)) / 1000}
	}
	return out
}

// CDF returns (latency ms, fraction at or below) points of the window.
func (l *Ledger) CDF() [][2]float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var pts [][2]float64
	for _, b := range l.hist.CumulativeDistribution() {
		pts = append(pts, [2]float64{float64(b.ValueAt) / 1000, b.Quantile / 100})
	}
	return pts
}
