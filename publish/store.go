package publish

import (
	"strings"
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// trackingStore is paho's ordered memory store that also knows how many
// outbound packets still await the broker. paho deletes an outbound packet
// from its store only when the broker has acknowledged it, so an empty set
// after a reconnect proves that everything sent before the connection was
// lost has arrived, which paho's tokens do not prove (see Bridge).
type trackingStore struct {
	*mqtt.OrderedMemoryStore
	mu      sync.Mutex
	pending map[string]struct{}
	empty   chan struct{} // closed while pending is empty
}

func newTrackingStore() *trackingStore {
	s := &trackingStore{OrderedMemoryStore: mqtt.NewOrderedMemoryStore(), pending: map[string]struct{}{}, empty: make(chan struct{})}
	close(s.empty)
	return s
}

// outbound reports whether a store key holds a packet we sent ("o.<id>").
func outbound(key string) bool { return strings.HasPrefix(key, "o.") }

// Put implements mqtt.Store.
func (s *trackingStore) Put(key string, m packets.ControlPacket) {
	s.OrderedMemoryStore.Put(key, m)
	if !outbound(key) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 {
		s.empty = make(chan struct{})
	}
	s.pending[key] = struct{}{}
}

// Del implements mqtt.Store.
func (s *trackingStore) Del(key string) {
	s.OrderedMemoryStore.Del(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	// A map delete, not a scan: with thousands of messages in flight a scan
	// per acknowledgement made publishing quadratic.
	if _, ok := s.pending[key]; ok {
		delete(s.pending, key)
		if len(s.pending) == 0 {
			close(s.empty)
		}
	}
}

// Reset implements mqtt.Store.
func (s *trackingStore) Reset() {
	s.OrderedMemoryStore.Reset()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) > 0 {
		clear(s.pending)
		close(s.empty)
	}
}

// drained returns a channel closed once no outbound packet awaits the broker.
func (s *trackingStore) drained() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.empty
}
