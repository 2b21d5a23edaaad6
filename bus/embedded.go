package bus

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Defaults of the embedded server's listeners (medpipe up's flags use them).
const (
	DefaultEmbeddedHost = "127.0.0.1"
	DefaultNATSPort     = 4222
	DefaultMQTTPort     = 1883
	DefaultMonitorPort  = 8222
)

// EmbeddedOptions configures an in-process nats-server. Ports: 0 takes the
// default, -1 picks a free port, and for MQTT and monitoring a negative
// value other than -1 disables the listener.
type EmbeddedOptions struct {
	// Host to listen on (default DefaultEmbeddedHost).
	Host string
	// Port for NATS clients (default DefaultNATSPort).
	Port int
	// MQTTPort for MQTT 3.1.1 clients (default DefaultMQTTPort; -2 disables).
	MQTTPort int
	// HTTPPort for nats-server's monitoring endpoints (default DefaultMonitorPort; -2 disables).
	HTTPPort int
	// StoreDir holds JetStream's files (required).
	StoreDir string
	// ServerName (default "medpipe"); MQTT requires one.
	ServerName string
	// MaxStore bounds JetStream file storage in bytes (0: nats-server's default).
	MaxStore int64
	// Logging turns on nats-server's own log lines.
	Logging bool
	// Credentials, when set, turn authentication on: one user per role
	// with RolePermissions, for NATS and MQTT clients alike; anonymous
	// clients are refused.
	Credentials Credentials
	// TopicPrefix is the first level of the live MQTT topics, which only
	// the publish role may write (DefaultTopicPrefix when empty).
	TopicPrefix string
	// JetStreamKey, when set, encrypts JetStream's files at rest (streams,
	// KV buckets, the MQTT store) under this key, with JetStreamCipher.
	JetStreamKey string
	// JetStreamCipher is the store's cipher: CipherAES or CipherChaCha,
	// or empty for the faster one on this CPU (HardwareCipher). A store
	// written under the other cipher is converted when it is opened.
	JetStreamCipher string
	// ClusterName, ClusterPort and Routes, when ClusterPort is set, make
	// the server a node of a JetStream cluster: it listens for routes on
	// ClusterPort of Host and connects to Routes (host:port of every node,
	// itself included). ServerName must then differ from node to node.
	ClusterName string
	ClusterPort int
	Routes      []string
}

// Embedded is a running in-process nats-server.
type Embedded struct {
	Server *server.Server
	// MQTTAddr is host:port of the MQTT listener, empty when disabled.
	MQTTAddr string
	// MonitorAddr is host:port of the monitoring listener, empty when disabled.
	MonitorAddr string
}

// ClientURL is the URL NATS clients connect to.
func (e *Embedded) ClientURL() string { return e.Server.ClientURL() }

// MQTTURL is the URL MQTT clients connect to (tcp://host:port).
func (e *Embedded) MQTTURL() string { return "tcp://" + e.MQTTAddr }

// Shutdown stops the server and waits for it.
func (e *Embedded) Shutdown() {
	e.Server.Shutdown()
	e.Server.WaitForShutdown()
}

// ErrPortInUse is returned when a listener's port is taken.
var ErrPortInUse = errors.New("port in use")

// PortError names the listener whose port could not be had.
type PortError struct {
	Listener string // "nats", "mqtt", "monitoring"
	Addr     string
	Err      error
}

func (e *PortError) Error() string {
	return fmt.Sprintf("%s listener on %s: %v", e.Listener, e.Addr, e.Err)
}

func (e *PortError) Unwrap() error { return e.Err }

// errNotReady is a server that did not come up, e.g. because a port picked
// as free was taken before the server bound it.
var errNotReady = errors.New("bus: embedded nats-server did not become ready within 10s")

// StartEmbedded starts nats-server in-process with JetStream, and MQTT and
// monitoring unless disabled, and waits until it accepts clients. Ports
// picked at random (-1) are picked again if the server cannot come up.
func StartEmbedded(o EmbeddedOptions) (*Embedded, error) {
	random := o.Port == -1 || o.MQTTPort == -1 || o.HTTPPort == -1
	for attempt := 1; ; attempt++ {
		e, err := startEmbedded(o)
		if err == nil || !errors.Is(err, errNotReady) || !random || attempt == 3 {
			return e, err
		}
	}
}

func startEmbedded(o EmbeddedOptions) (*Embedded, error) {
	if o.StoreDir == "" {
		return nil, errors.New("bus: embedded server needs a JetStream store directory")
	}
	if o.Host == "" {
		o.Host = DefaultEmbeddedHost
	}
	if o.ServerName == "" {
		o.ServerName = "medpipe"
	}
	var err error
	randomClientPort := o.Port == -1 // nats-server binds a random port itself, atomically
	if !randomClientPort {
		if o.Port, err = pickPort("nats", o.Host, o.Port, DefaultNATSPort); err != nil {
			return nil, err
		}
	}
	if o.MQTTPort, err = pickPort("mqtt", o.Host, o.MQTTPort, DefaultMQTTPort); err != nil {
		return nil, err
	}
	if o.HTTPPort, err = pickPort("monitoring", o.Host, o.HTTPPort, DefaultMonitorPort); err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName: o.ServerName,
		Host:       o.Host,
		Port:       o.Port, // -1 is server.RANDOM_PORT
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      !o.Logging,
		MaxPayload: 1 << 20,
	}
	if o.MaxStore > 0 {
		opts.JetStreamMaxStore = o.MaxStore
	}
	if o.ClusterPort > 0 {
		opts.Cluster = server.ClusterOpts{Name: o.ClusterName, Host: o.Host, Port: o.ClusterPort}
		for _, r := range o.Routes {
			opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats-route", Host: r})
		}
	}
	if o.JetStreamKey != "" {
		c, err := storeCipher(o.JetStreamCipher)
		if err != nil {
			return nil, err
		}
		opts.JetStreamKey, opts.JetStreamCipher = o.JetStreamKey, c
	}
	if o.Credentials != nil {
		if opts.Users, err = serverUsers(o.Credentials, o.TopicPrefix); err != nil {
			return nil, err
		}
	}
	e := &Embedded{}
	if o.MQTTPort > 0 {
		opts.MQTT.Host, opts.MQTT.Port = o.Host, o.MQTTPort
		e.MQTTAddr = net.JoinHostPort(o.Host, strconv.Itoa(o.MQTTPort))
	}
	if o.HTTPPort > 0 {
		opts.HTTPHost, opts.HTTPPort = o.Host, o.HTTPPort
		e.MonitorAddr = net.JoinHostPort(o.Host, strconv.Itoa(o.HTTPPort))
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded nats-server: %w", err)
	}
	if o.Logging {
		s.ConfigureLogger()
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errNotReady
	}
	e.Server = s
	return e, nil
}

// pickPort resolves a port option: 0 is the default, -1 a free port, below
// -1 disabled (returned as 0). A fixed port is checked so that a busy one
// gives a PortError rather than a server that silently lacks a listener.
func pickPort(name, host string, port, def int) (int, error) {
	switch {
	case port == 0:
		port = def
	case port == -1:
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, &PortError{name, host, err}
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		return port, nil
	case port < -1:
		return 0, nil
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return 0, &PortError{name, addr, fmt.Errorf("%w: %w", ErrPortInUse, err)}
	}
	l.Close()
	return port, nil
}
