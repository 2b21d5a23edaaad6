// Package mqttconn gives paho.mqtt.golang clients a network connection
// that reads through a buffer and coalesces writes.
//
// paho reads each packet with several small reads of its connection (the
// first byte, each byte of the remaining length, then the rest) and
// writes each packet with a write of its own: with QoS 1 that is a write
// system call for every PUBLISH and three reads for every PUBACK, which at
// tens of thousands of messages a second was the largest single cost of
// the publish stage. A Conn answers paho's reads from a buffer and hands
// its writes to one flusher goroutine, which writes whatever has gathered
// since its last write in one system call (the pattern nats.go's own
// flusher uses): at low rates a packet leaves as soon as the flusher runs,
// under load many leave together.
package mqttconn

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// Defaults of a Conn.
const (
	// DefaultReadBuffer is the read buffer's size.
	DefaultReadBuffer = 32 << 10
	// DefaultMaxPending bounds the bytes written and not yet flushed:
	// a writer waits beyond it.
	DefaultMaxPending = 256 << 10
	// DefaultWriteTimeout bounds each flush: a broker that stops reading
	// fails the connection instead of holding it for ever.
	DefaultWriteTimeout = 10 * time.Second
)

// ErrClosed is returned by writes to a closed Conn.
var ErrClosed = errors.New("mqttconn: connection closed")

// Open dials uri as paho would (mqtt and tcp, with the environment's
// proxy; ssl, tls, mqtts, mqtt+ssl and tcps with opts.TLSConfig; ws and
// wss; unix) and returns the connection wrapped by New. It is an
// mqtt.OpenConnectionFunc: pass it to SetCustomOpenConnectionFn.
func Open(uri *url.URL, opts mqtt.ClientOptions) (net.Conn, error) {
	dialer := opts.Dialer
	if dialer == nil {
		dialer = &net.Dialer{Timeout: 30 * time.Second}
	}
	var (
		conn net.Conn
		err  error
	)
	switch uri.Scheme {
	case "mqtt", "tcp":
		conn, err = proxy.FromEnvironmentUsing(dialer).Dial("tcp", uri.Host)
	case "ssl", "tls", "mqtts", "mqtt+ssl", "tcps":
		conn, err = dialTLS(dialer, uri.Host, opts.TLSConfig)
	case "ws", "wss":
		dialURI := *uri // credentials stay out of the HTTP request line
		dialURI.User = nil
		var tlsc *tls.Config
		if uri.Scheme == "wss" {
			tlsc = opts.TLSConfig
		}
		conn, err = mqtt.NewWebsocket(dialURI.String(), tlsc, opts.ConnectTimeout, opts.HTTPHeaders, opts.WebsocketOptions)
	case "unix":
		path := uri.Host
		if path == "" {
			path = uri.Path
		}
		conn, err = dialer.Dial("unix", path)
	default:
		return nil, fmt.Errorf("mqttconn: unknown scheme %q", uri.Scheme)
	}
	if err != nil {
		return nil, err
	}
	return New(conn, Options{WriteTimeout: opts.WriteTimeout}), nil
}

// dialTLS dials a TLS connection, through the proxy all_proxy names if it
// is set, as paho does.
func dialTLS(dialer *net.Dialer, host string, tlsc *tls.Config) (net.Conn, error) {
	if os.Getenv("all_proxy") == "" {
		return tls.DialWithDialer(dialer, "tcp", host, tlsc)
	}
	raw, err := proxy.FromEnvironment().Dial("tcp", host)
	if err != nil {
		return nil, err
	}
	cfg := tlsc.Clone()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(host)
	}
	conn := tls.Client(raw, cfg)
	if err := conn.Handshake(); err != nil {
		_ = raw.Close()
		return nil, err
	}
	return conn, nil
}

// Options are a Conn's limits; zero values take the defaults.
type Options struct {
	ReadBuffer   int           // DefaultReadBuffer
	MaxPending   int           // DefaultMaxPending
	WriteTimeout time.Duration // DefaultWriteTimeout
}

// Conn is a net.Conn whose reads are buffered and whose writes are
// coalesced by a flusher goroutine. A write returns once its bytes are
// queued; a failed flush closes the connection, so that paho's reader
// sees the loss and reconnects, and fails every later write. Deadlines
// set by the caller apply to reads; each flush has its own write timeout.
type Conn struct {
	net.Conn
	r       *bufio.Reader
	timeout time.Duration
	max     int

	mu      sync.Mutex
	room    sync.Cond // the flusher took the pending bytes, or the conn failed
	ready   sync.Cond // bytes are pending, or the conn is closing
	pending []byte
	spare   []byte
	err     error // the first flush error, or ErrClosed
	closing bool
	done    chan struct{} // the flusher returned
}

// New wraps conn.
func New(conn net.Conn, o Options) *Conn {
	if o.ReadBuffer <= 0 {
		o.ReadBuffer = DefaultReadBuffer
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	c := &Conn{Conn: conn, r: bufio.NewReaderSize(conn, o.ReadBuffer), timeout: o.WriteTimeout, max: o.MaxPending, done: make(chan struct{})}
	c.room.L, c.ready.L = &c.mu, &c.mu
	go c.flush()
	return c
}

// Read reads from the buffer, filling it from the connection when empty.
func (c *Conn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Write queues p for the flusher. It waits while MaxPending bytes are
// queued, and fails once the connection has failed or closed.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closing && len(c.pending) > 0 && len(c.pending)+len(p) > c.max {
		c.room.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.closing {
		return 0, ErrClosed
	}
	c.pending = append(c.pending, p...)
	c.ready.Signal()
	return len(p), nil
}

// flush writes what is pending, as one write, until the conn closes.
func (c *Conn) flush() {
	defer close(c.done)
	c.mu.Lock()
	for {
		for len(c.pending) == 0 && !c.closing && c.err == nil {
			c.ready.Wait()
		}
		if c.err != nil || len(c.pending) == 0 {
			c.mu.Unlock()
			return
		}
		out := c.pending
		c.pending, c.spare = c.spare[:0], nil
		c.room.Broadcast()
		c.mu.Unlock()

		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
		_, err := c.Conn.Write(out)

		c.mu.Lock()
		c.spare = out
		if err != nil {
			c.err = fmt.Errorf("mqttconn: write: %w", err)
			c.room.Broadcast()
			c.mu.Unlock()
			_ = c.Conn.Close() // paho's reader sees it and reconnects
			return
		}
	}
}

// closeFlushWait bounds how long Close waits for what is pending to
// leave: paho closes a connection it found lost, and a flush stuck on a
// broker that stopped reading must not hold the reconnect.
const closeFlushWait = time.Second

// Close writes what is pending (waiting at most closeFlushWait) and closes
// the connection.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closing = true
	c.ready.Signal()
	c.room.Broadcast()
	c.mu.Unlock()
	t := time.NewTimer(closeFlushWait)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
	}
	err := c.Conn.Close() // ends a stuck flush too
	<-c.done
	c.mu.Lock()
	if c.err == nil {
		c.err = ErrClosed
	}
	c.mu.Unlock()
	return err
}

// SetDeadline sets the read deadline: writes are bounded by the flusher's
// own timeout, since a write returns before its bytes leave.
func (c *Conn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// SetWriteDeadline does nothing: see SetDeadline.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }
