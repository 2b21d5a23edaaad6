package bus

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultURL is where stages look for NATS unless told otherwise.
const DefaultURL = "nats://127.0.0.1:4222"

// ConnectOptions configures Connect.
type ConnectOptions struct {
	// URLs is a comma-separated list of NATS server URLs (DefaultURL when empty).
	URLs string
	// Name identifies the connection in the server's monitoring.
	Name string
	// MaxPendingPublishes bounds asynchronous JetStream publishes awaiting
	// their ack (default 4096); publishing blocks beyond it, which is how a
	// slow JetStream slows the stages in front of it.
	MaxPendingPublishes int
	// Auth is the client's credentials and TLS settings.
	Auth Auth
	// Options are extra nats.go options.
	Options []nats.Option
	// Log receives connection events; nil uses slog.Default().
	Log *slog.Logger
}

// Connect connects to NATS, reconnecting for ever after losing the
// connection, and returns the connection and its JetStream context.
func Connect(ctx context.Context, o ConnectOptions) (*nats.Conn, jetstream.JetStream, error) {
	if o.URLs == "" {
		o.URLs = DefaultURL
	}
	if o.MaxPendingPublishes <= 0 {
		o.MaxPendingPublishes = 4096
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	auth, err := o.Auth.Options()
	if err != nil {
		return nil, nil, err
	}
	opts := append([]nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted()) }),
	}, auth...)
	opts = append(opts, o.Options...)
	nc, err := nats.Connect(o.URLs, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("bus: connect to NATS at %s: %w", redactURLs(o.URLs), err)
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(o.MaxPendingPublishes),
		// A publish lost with a stream leader gets no answer at all; after
		// this long its future fails and PubAck publishes it again (deduped
		// by its message id if the first did land).
		jetstream.WithPublishAsyncTimeout(PublishAckTimeout),
	)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	return nc, js, nil
}

// redactURLs hides passwords in a comma-separated URL list.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}

// RedactURLs hides passwords in a comma-separated URL list, for logs.
func RedactURLs(urls string) string { return redactURLs(urls) }

// Backpressure is the publish option stages use for asynchronous JetStream
// publishes: when MaxPendingPublishes are awaiting acks, a publish waits up
// to 10 s for room instead of failing at once, so a slow JetStream slows the
// stage (and, for ingest, the device sockets it reads) rather than causing
// errors and retries.
var Backpressure = jetstream.WithStallWait(10 * time.Second)

// Health reports a NATS connection's state: nil while connected.
func Health(nc *nats.Conn) error {
	if s := nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("%s", s)
	}
	return nil
}
