// Package testkit holds test support shared by medpipe's modules: free
// ports, a real Mosquitto broker on loopback, and an MQTT collector. It is
// imported only from tests.
package testkit

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// MosquittoOptions configures StartMosquitto.
type MosquittoOptions struct {
	// Persistence keeps sessions and queued messages across Stop and Start.
	Persistence bool
	// TLS, when set, makes the listener TLS-only with these files.
	TLS *TLSFiles
	// Users, when set, are the only accepted username/password pairs
	// (no anonymous clients).
	Users map[string]string
}

// Mosquitto is a real mosquitto broker on 127.0.0.1 for one test.
type Mosquitto struct {
	t    testing.TB
	bin  string
	conf string
	port int
	tls  bool
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// MosquittoBinary finds mosquitto, or fails the test: the README's test
// command installs it, and a missing broker must not pass as a skip.
func MosquittoBinary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto"
	}
	t.Fatal("mosquitto not installed: run ./scripts/test.sh (it installs it) or apt-get install mosquitto")
	return ""
}

// HAProxyBinary finds haproxy, or fails the test: the README's test command
// installs it, and a missing proxy must not pass as a skip.
func HAProxyBinary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy"
	}
	t.Fatal("haproxy not installed: run ./scripts/test.sh (it installs it) or apt-get install haproxy")
	return ""
}

// StartMosquitto starts a broker on a free loopback port and stops it when
// the test ends.
func StartMosquitto(t testing.TB, o MosquittoOptions) *Mosquitto {
	t.Helper()
	dir := t.TempDir()
	m := &Mosquitto{t: t, bin: MosquittoBinary(t), port: FreePort(t), conf: filepath.Join(dir, "mosquitto.conf")}
	// Run as whoever runs the test: as root mosquitto would switch to its own
	// user, which cannot write the test's temp dir.
	conf := ""
	if u, err := user.Current(); err == nil {
		conf = "user " + u.Username + "\n"
	}
	conf += fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous %t\nmax_queued_messages 1000000\nmax_inflight_messages 0\nlog_dest stderr\nlog_type error\nlog_type warning\n", m.port, len(o.Users) == 0)
	if o.TLS != nil {
		m.tls = true
		conf += fmt.Sprintf("cafile %s\ncertfile %s\nkeyfile %s\n", o.TLS.CA, o.TLS.Cert, o.TLS.Key)
	}
	if len(o.Users) > 0 {
		pw := filepath.Join(dir, "passwords")
		for u, p := range o.Users {
			args := []string{"-b", pw, u, p}
			if _, err := os.Stat(pw); err != nil {
				args = append([]string{"-c"}, args...)
			}
			// mosquitto_passwd comes with the mosquitto package.
			if out, err := exec.Command("mosquitto_passwd", args...).CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_passwd: %v: %s", err, out)
			}
		}
		conf += "password_file " + pw + "\n"
	}
	if o.Persistence {
		conf += fmt.Sprintf("persistence true\npersistence_location %s/\nautosave_interval 1\n", dir)
	}
	if err := os.WriteFile(m.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	lf, err := os.Create(filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		t.Fatal(err)
	}
	m.log = lf
	m.Start()
	t.Cleanup(func() {
		m.mu.Lock()
		cmd, done := m.cmd, m.done
		m.mu.Unlock()
		if cmd != nil {
			_ = cmd.Process.Kill()
			<-done
		}
		lf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(lf.Name()); err == nil && len(b) > 0 {
				t.Logf("mosquitto log:\n%s", b)
			}
		}
	})
	return m
}

// URL is the broker's address for MQTT clients.
func (m *Mosquitto) URL() string {
	if m.tls {
		return "ssl://127.0.0.1:" + strconv.Itoa(m.port)
	}
	return "tcp://127.0.0.1:" + strconv.Itoa(m.port)
}

// Start starts the broker (again) on its port and waits until it accepts.
func (m *Mosquitto) Start() {
	m.t.Helper()
	cmd := exec.Command(m.bin, "-c", m.conf)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	if err := cmd.Start(); err != nil {
		m.t.Fatalf("start mosquitto: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	m.mu.Lock()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(m.port))
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			m.t.Fatalf("mosquitto exited at start (port %d)", m.port)
		default:
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("mosquitto not accepting on %d: %v", m.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the broker with SIGTERM (saving persistence) and waits for it.
func (m *Mosquitto) Stop() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// CollectorOptions configures NewCollector.
type CollectorOptions struct {
	URL, Filter, ClientID string
	QoS                   byte
	// CleanSession false keeps the subscription and queued messages at the
	// broker while the collector is disconnected.
	CleanSession bool
	// Username, Password and TLS authenticate to a secured broker.
	Username, Password string
	TLS                *tls.Config
}

// Message is one received MQTT message.
type Message struct {
	Topic    string
	Payload  string
	Retained bool
}

// Collector subscribes to a topic filter and records every message in
// arrival order.
type Collector struct {
	client mqtt.Client
	mu     sync.Mutex
	msgs   []Message
	notify chan struct{}
}

// NewCollector connects, subscribes and waits for the subscription; it
// resubscribes after reconnecting and disconnects when the test ends.
func NewCollector(t testing.TB, o CollectorOptions) *Collector {
	t.Helper()
	c := &Collector{notify: make(chan struct{}, 1)}
	handler := func(_ mqtt.Client, m mqtt.Message) {
		c.mu.Lock()
		c.msgs = append(c.msgs, Message{Topic: m.Topic(), Payload: string(m.Payload()), Retained: m.Retained()})
		c.mu.Unlock()
		select {
		case c.notify <- struct{}{}:
		default:
		}
	}
	subscribed := make(chan error, 1)
	opts := mqtt.NewClientOptions().AddBroker(o.URL).SetClientID(o.ClientID).
		SetCleanSession(o.CleanSession).SetAutoReconnect(true).SetConnectRetry(true).
		SetMaxReconnectInterval(500 * time.Millisecond).SetOrderMatters(true).
		SetDefaultPublishHandler(handler).
		SetUsername(o.Username).SetPassword(o.Password).SetTLSConfig(o.TLS).
		SetOnConnectHandler(func(cl mqtt.Client) {
			tok := cl.Subscribe(o.Filter, o.QoS, handler)
			go func() {
				tok.Wait()
				select {
				case subscribed <- tok.Error():
				default:
				}
			}()
		})
	c.client = mqtt.NewClient(opts)
	if tok := c.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("collector connect to %s: %v", o.URL, tok.Error())
	}
	select {
	case err := <-subscribed:
		if err != nil {
			t.Fatalf("collector subscribe %s: %v", o.Filter, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("collector: no SUBACK within 10s")
	}
	t.Cleanup(c.Close)
	return c
}

// Messages returns a copy of what arrived so far.
func (c *Collector) Messages() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Message(nil), c.msgs...)
}

// Len returns how many messages arrived so far.
func (c *Collector) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

// WaitLen waits until at least n messages arrived.
func (c *Collector) WaitLen(ctx context.Context, n int) error {
	for {
		if got := c.Len(); got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("collector: %d of %d messages arrived: %w", c.Len(), n, ctx.Err())
		case <-c.notify:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close disconnects.
func (c *Collector) Close() {
	if c.client.IsConnected() {
		c.client.Disconnect(250)
	}
}

// FreeAddr returns a loopback host:port that was free a moment ago. Prefer
// letting the process under test pick its own port (":0") and report it:
// another test can take this one first.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return "127.0.0.1:" + strconv.Itoa(FreePort(t))
}
