package mqttconn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/medpipe/medpipe/testkit"
)

// pair returns a Conn wrapping one end of a loopback TCP connection, and
// the other end.
func pair(t *testing.T, o Options) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	c := New(raw, o)
	t.Cleanup(func() { _ = c.Close(); _ = peer.Close() })
	return c, peer
}

// TestWritesArriveInOrder: concurrent writers' packets each arrive whole
// and in each writer's order, and reads see what the peer sent, byte for
// byte, however small the reads.
func TestWritesArriveInOrder(t *testing.T) {
	c, peer := pair(t, Options{MaxPending: 1 << 10})
	const writers, each = 4, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if _, err := c.Write([]byte{byte(w), byte(i >> 8), byte(i)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	got := make([]byte, writers*each*3)
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	next := make([]int, writers)
	for p := range len(got) / 3 {
		w, i := int(got[3*p]), int(got[3*p+1])<<8|int(got[3*p+2])
		if w >= writers || i != next[w] {
			t.Fatalf("packet %d: writer %d's %d, want its %d", p, w, i, next[w])
		}
		next[w]++
	}

	sent := bytes.Repeat([]byte("puback"), 10_000)
	go func() { _, _ = peer.Write(sent) }()
	read := make([]byte, 0, len(sent))
	b := make([]byte, 1)
	for len(read) < len(sent) {
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		read = append(read, b[0])
	}
	if !bytes.Equal(read, sent) {
		t.Fatal("reads differ from what the peer sent")
	}
}

// TestCloseFlushes: what was written before Close reaches the peer.
func TestCloseFlushes(t *testing.T) {
	c, peer := pair(t, Options{})
	want := bytes.Repeat([]byte{0xE0, 0}, 5000) // DISCONNECT packets
	for i := 0; i < len(want); i += 2 {
		if _, err := c.Write(want[i : i+2]); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(peer)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("peer read %d bytes (%v), want %d", len(got), err, len(want))
	}
	if _, err := c.Write([]byte{1}); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close: %v, want ErrClosed", err)
	}
}

// TestStuckPeerFailsTheConn: a peer that stops reading fills the socket,
// writers wait at MaxPending, the flush times out, and then every write
// fails and the connection is closed, so that paho's reader sees the loss.
func TestStuckPeerFailsTheConn(t *testing.T) {
	c, _ := pair(t, Options{MaxPending: 64 << 10, WriteTimeout: 300 * time.Millisecond})
	chunk := make([]byte, 32<<10)
	failed := make(chan error, 1)
	go func() {
		for {
			if _, err := c.Write(chunk); err != nil {
				failed <- err
				return
			}
		}
	}()
	select {
	case err := <-failed:
		if errors.Is(err, ErrClosed) {
			t.Fatalf("write failed with %v, want the flush's timeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("writes to a peer that reads nothing never failed")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a failed connection succeeded")
	}
}

// TestOpenSchemes: Open dials the schemes paho dials and refuses others.
func TestOpenSchemes(t *testing.T) {
	addr := testkit.ServeTCP(t, func(net.Conn) {}).String()
	opts := mqtt.NewClientOptions()
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"tcp://" + addr, true},
		{"mqtt://" + addr, true},
		{"gopher://" + addr, false},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		c, err := Open(u, *opts)
		if (err == nil) != tc.ok {
			t.Fatalf("%s: err %v, want ok=%v", tc.url, err, tc.ok)
		}
		if c != nil {
			if _, ok := c.(*Conn); !ok {
				t.Fatalf("%s: a %T, not a buffered Conn", tc.url, c)
			}
			_ = c.Close()
		}
	}
}

// TestCloseDoesNotWaitOutAStuckFlush: Close of a connection whose peer
// stopped reading returns within closeFlushWait, not the write timeout.
func TestCloseDoesNotWaitOutAStuckFlush(t *testing.T) {
	c, _ := pair(t, Options{WriteTimeout: time.Hour})
	chunk := make([]byte, 1<<20)
	go func() {
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond) // the socket's buffers fill
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close waited on a flush to a peer that reads nothing")
	}
}
