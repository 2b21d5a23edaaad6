package decrypt

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/medpipe/medpipe/wire"
)

// Errors from KeyIndex.Identify.
var (
	ErrUnknownDevice = errors.New("decrypt: no device key opens the frame")
	ErrInvalid       = errors.New("decrypt: the frame decrypts but is not a valid reading")
	ErrAmbiguous     = errors.New("decrypt: more than one device key opens the frame")
)

// indexEntry is one device with its pre-expanded key.
type indexEntry struct {
	id      string
	dev     wire.Device
	key     *wire.LegacyKey
	v2      atomic.Pointer[wire.V2Key] // derived on the first v2 frame: most fleets are legacy
	revoked bool
}

// KeyIndex holds every device's pre-expanded legacy key. It is safe for
// concurrent use and can be changed while workers read it.
type KeyIndex struct {
	mu   sync.RWMutex
	list []*indexEntry // searched in order; compact for the first-block scan
	pos  map[string]int
}

// NewKeyIndex indexes devs.
func NewKeyIndex(devs []wire.Device) *KeyIndex {
	ix := &KeyIndex{pos: make(map[string]int, len(devs))}
	for _, d := range devs {
		ix.Put(d, false)
	}
	return ix
}

// Len returns the number of devices, revoked ones included.
func (ix *KeyIndex) Len() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return len(ix.list)
}

// Put adds or replaces a device's key; revoked devices stay identifiable so
// their frames can be refused as revoked rather than unknown.
func (ix *KeyIndex) Put(d wire.Device, revoked bool) {
	e := &indexEntry{id: d.ID, dev: d, key: wire.NewLegacyKey(d), revoked: revoked}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if i, ok := ix.pos[d.ID]; ok {
		ix.list[i] = e
		return
	}
	ix.pos[d.ID] = len(ix.list)
	ix.list = append(ix.list, e)
}

// Delete removes a device.
func (ix *KeyIndex) Delete(id string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	i, ok := ix.pos[id]
	if !ok {
		return
	}
	last := len(ix.list) - 1
	ix.list[i] = ix.list[last]
	ix.pos[ix.list[i].id] = i
	ix.list = ix.list[:last]
	delete(ix.pos, id)
}

// Lookup returns a device's key and whether it is revoked.
func (ix *KeyIndex) Lookup(id string) (key *wire.LegacyKey, revoked bool, ok bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	i, ok := ix.pos[id]
	if !ok {
		return nil, false, false
	}
	return ix.list[i].key, ix.list[i].revoked, true
}

// LookupV2 returns a device's v2 key and whether it is revoked.
func (ix *KeyIndex) LookupV2(id string) (key *wire.V2Key, revoked bool, ok bool) {
	ix.mu.RLock()
	i, ok := ix.pos[id]
	var e *indexEntry
	if ok {
		e = ix.list[i]
	}
	ix.mu.RUnlock()
	if !ok {
		return nil, false, false
	}
	k := e.v2.Load()
	if k == nil {
		k = wire.NewV2Key(e.dev)
		e.v2.Store(k)
	}
	return k, e.revoked, true
}

// Identified is the outcome of a key search: the device found and its
// reading, or, with ErrInvalid, the device whose key fitted the first block.
type Identified struct {
	Device  string          // device id
	Key     *wire.LegacyKey // the device's key, for the connection's next frames
	Revoked bool            // the device's key is revoked: its frames are refused
	Variant wire.Variant    // the legacy encoder that produced the frame
	Reading wire.Reading    // the validated reading
	// Candidates is how many keys' first block looked like a reading.
	Candidates int
}

// Identify finds the device whose key opens ct (binary ciphertext, whole
// blocks). It decrypts only the first block per key, then fully opens the
// candidates whose first block looks like the start of a reading: that
// check lets a wrong key through about once in 2^29, so the full check is
// what decides. buf is scratch space for Open (2×len(ct) avoids allocating).
//
// It returns ErrUnknownDevice when no key fits; ErrInvalid, with the device,
// when a key fits the first block but the message is not a valid reading;
// ErrAmbiguous when more than one key opens the message fully.
func (ix *KeyIndex) Identify(buf, ct []byte) (Identified, error) {
	if len(ct) == 0 || len(ct)%wire.BlockSize != 0 {
		return Identified{}, fmt.Errorf("%w: ciphertext of %d bytes is not whole blocks", ErrUnknownDevice, len(ct))
	}
	var first [wire.BlockSize]byte
	var few [4]*indexEntry // a wrong key is a candidate about once in 2^29: rarely more than one
	cands := few[:0]
	ix.mu.RLock()
	for _, e := range ix.list {
		e.key.FirstBlock(&first, ct)
		if wire.LooksLikeReading(&first) {
			cands = append(cands, e)
		}
	}
	ix.mu.RUnlock()
	return resolve(buf, ct, cands)
}

// resolve fully opens each candidate and keeps the one that gives a valid reading.
func resolve(buf, ct []byte, cands []*indexEntry) (Identified, error) {
	out := Identified{Candidates: len(cands)}
	if len(cands) == 0 {
		return out, ErrUnknownDevice
	}
	var fitsSpace [4]string
	fits := fitsSpace[:0] // device ids that open ct fully
	var firstErr error
	for _, e := range cands {
		r, v, err := e.key.Open(buf, ct, wire.Pico)
		if err != nil {
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		fits = append(fits, e.id)
		out.Device, out.Key, out.Revoked, out.Variant, out.Reading = e.id, e.key, e.revoked, v, r
	}
	switch len(fits) {
	case 0:
		out.Device = cands[0].id // the likeliest sender, for the dead letter
		// wire's errors name what is wrong, never the key or the text.
		return out, fmt.Errorf("%w: %w", ErrInvalid, firstErr)
	case 1:
		return out, nil
	}
	// Ids are not secret, and operators need them to fix the keys file.
	more := ""
	if len(fits) > 4 {
		more, fits = fmt.Sprintf(" and %d more", len(fits)-4), fits[:4]
	}
	return Identified{Candidates: len(cands)}, fmt.Errorf("%w: devices %s%s", ErrAmbiguous, strings.Join(fits, ", "), more)
}
