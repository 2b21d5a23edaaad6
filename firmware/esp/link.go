package esp

import (
	"context"
	"io"
	"sync"
	"time"
)

// Link is one TCP connection multiplexed by the module. Read returns data
// from +IPD messages; Write sends with AT+CIPSEND.
type Link struct {
	m      *Modem
	id     int
	server bool // opened by a remote peer

	mu      sync.Mutex
	buf     []byte
	closed  bool
	notify  chan struct{}
	timeout time.Duration
}

func newLink(m *Modem, id int, server bool) *Link {
	return &Link{m: m, id: id, server: server, notify: make(chan struct{}, 1)}
}

// SetReadTimeout bounds every later Read (0: wait for ever).
func (l *Link) SetReadTimeout(d time.Duration) {
	l.mu.Lock()
	l.timeout = d
	l.mu.Unlock()
}

func (l *Link) deliver(b []byte) {
	l.mu.Lock()
	l.buf = append(l.buf, b...)
	l.mu.Unlock()
	l.wake()
}

func (l *Link) closeLocal() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.wake()
}

func (l *Link) wake() {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// Read reads what the peer sent. It returns io.EOF once the link is closed
// and everything received was read, ErrTimeout after the read timeout.
func (l *Link) Read(p []byte) (int, error) {
	var deadline <-chan time.Time
	for {
		l.mu.Lock()
		if len(l.buf) > 0 {
			n := copy(p, l.buf)
			l.buf = l.buf[n:]
			l.mu.Unlock()
			return n, nil
		}
		closed, timeout := l.closed, l.timeout
		l.mu.Unlock()
		if closed {
			return 0, io.EOF
		}
		if deadline == nil && timeout > 0 {
			t := time.NewTimer(timeout)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-l.notify:
		case <-deadline:
			return 0, ErrTimeout
		}
	}
}

// Write sends p to the peer.
func (l *Link) Write(p []byte) (int, error) {
	return l.WriteContext(context.Background(), p)
}

// WriteContext sends p to the peer unless ctx ends first.
func (l *Link) WriteContext(ctx context.Context, p []byte) (int, error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return 0, ErrClosed
	}
	if err := l.m.send(ctx, l.id, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Closed reports whether the link is closed.
func (l *Link) Closed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// Close closes the link.
func (l *Link) Close() error {
	if l.Closed() {
		return nil
	}
	err := l.m.closeLink(context.Background(), l.id)
	l.closeLocal()
	l.m.mu.Lock()
	if l.m.links[l.id] == l {
		l.m.links[l.id] = nil
	}
	l.m.mu.Unlock()
	return err
}
