package bus

// RecentSeqs remembers the last n stream sequences added: a ring and an
// index, constant memory. Stages use it to recognise a redelivery of a
// message they finished moments ago (publish: READINGS messages whose MQTT
// messages the broker has; decrypt: RAW frames whose v2 mark is stored). It
// is not safe for concurrent use.
type RecentSeqs struct {
	ring []uint64
	next int
	set  map[uint64]struct{}
}

// NewRecentSeqs returns a set that remembers the last n sequences.
func NewRecentSeqs(n int) RecentSeqs {
	return RecentSeqs{ring: make([]uint64, n), set: make(map[uint64]struct{}, n)}
}

// Has reports whether seq is among the last n added.
func (r *RecentSeqs) Has(seq uint64) bool {
	_, ok := r.set[seq]
	return ok
}

// Add remembers seq, forgetting the oldest once n are held; 0 is ignored.
func (r *RecentSeqs) Add(seq uint64) {
	if seq == 0 || r.Has(seq) {
		return
	}
	if old := r.ring[r.next]; old != 0 {
		delete(r.set, old)
	}
	r.ring[r.next] = seq
	r.set[seq] = struct{}{}
	r.next = (r.next + 1) % len(r.ring)
}
