package decrypt

import (
	"sync"

	"github.com/medpipe/medpipe/wire"
)

// connDevice is what a connection was found to carry.
type connDevice struct {
	device  string
	variant wire.Variant
	// keys is the key index's generation when a connection's first frame
	// fitted no key (device ""): a key added or rotated since may fit.
	keys uint64
}

// connCache remembers which device each connection carries, in bounded
// memory: two generations of maps; when the current one is full it becomes
// the old one and the previous old one is dropped, so connections seen
// recently survive and long-gone ones are forgotten.
type connCache struct {
	mu       sync.Mutex
	max      int
	cur, old map[string]connDevice
}

func newConnCache(max int) *connCache {
	return &connCache{max: max, cur: map[string]connDevice{}, old: map[string]connDevice{}}
}

func (c *connCache) get(conn string) (connDevice, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.cur[conn]; ok {
		return d, true
	}
	d, ok := c.old[conn]
	if ok {
		c.putLocked(conn, d)
	}
	return d, ok
}

func (c *connCache) put(conn string, d connDevice) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(conn, d)
}

func (c *connCache) putLocked(conn string, d connDevice) {
	if len(c.cur) >= c.max/2 {
		c.old, c.cur = c.cur, make(map[string]connDevice, c.max/2)
	}
	c.cur[conn] = d
}
