// Package webhook is a sink that POSTs readings to an HTTP endpoint as JSON
// batches: a JSON array of READINGS-shaped objects (device, values,
// numbers, received, raw_seq, …), Content-Type application/json.
//
// Readings are gathered until BatchSize are waiting or the oldest has
// waited Linger, then sent, one request at a time so that a device's
// readings arrive in order. A network error, a 5xx or a 429 is retried
// with exponential backoff (honouring Retry-After) until RetryFor has
// passed; the batch's acknowledgements then fail and publish redelivers
// the readings later, so nothing is lost. Delivery is at least once:
// receivers drop repeats by (conn, frame_seq), which name the frame a
// reading came from (frames the edge stored in one RAW batch share a
// raw_seq).
package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/sink"
)

// Defaults for Options.
const (
	DefaultBatchSize  = 500
	DefaultLinger     = 100 * time.Millisecond
	DefaultTimeout    = 10 * time.Second
	DefaultRetryFor   = 30 * time.Second
	DefaultMaxPending = 8192
	DefaultAuthHeader = "Authorization"
	maxBackoff        = 5 * time.Second
)

// Options configures a Sink. Zero values take the defaults.
type Options struct {
	// URL receives the POSTs (http:// or https://).
	URL string
	// AuthHeader is the header that carries AuthValue (default Authorization).
	AuthHeader string
	// AuthValue is the header's value, e.g. "Bearer …": read from a file by
	// the caller, never logged.
	AuthValue string
	// TLS configures https:// (nil: system roots, TLS 1.2 or later).
	TLS *tls.Config
	// BatchSize is the most readings in one POST; Linger the longest a
	// reading waits for others to join it.
	BatchSize int
	Linger    time.Duration
	// Timeout bounds one request; RetryFor how long one batch is retried.
	Timeout  time.Duration
	RetryFor time.Duration
	// MaxPending bounds readings held awaiting their POST; writes wait beyond it.
	MaxPending int
	// Log receives failures; nil uses slog.Default().
	Log *slog.Logger
	// Metrics registers medpipe_webhook_*; nil registers nowhere.
	Metrics prometheus.Registerer
}

// Sink is the webhook sink.
type Sink struct {
	o      Options
	client *http.Client
	in     chan item
	flush  chan chan struct{}
	stop   context.CancelFunc
	done   chan struct{}
	m      metrics

	mu      sync.Mutex
	lastErr error // of the latest request: Health
}

var (
	_ sink.Sink    = (*Sink)(nil)
	_ sink.Checker = (*Sink)(nil)
)

type item struct {
	readings []*bus.Reading
	ack      *ack
}

type ack struct {
	done chan struct{}
	err  error
}

func (a *ack) Wait(ctx context.Context) error {
	select {
	case <-a.done:
		return a.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

type metrics struct {
	batches, readings, retries, failures prometheus.Counter
}

// New checks the options; Connect starts sending.
func New(o Options) (*Sink, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("webhook: URL %q: want http://host/path or https://host/path", redact(o.URL))
	}
	if o.AuthHeader == "" {
		o.AuthHeader = DefaultAuthHeader
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.Linger <= 0 {
		o.Linger = DefaultLinger
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.RetryFor <= 0 {
		o.RetryFor = DefaultRetryFor
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.TLS == nil {
		o.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "medpipe_webhook_" + name, Help: help})
	}
	s := &Sink{
		o: o,
		client: &http.Client{Timeout: o.Timeout, Transport: &http.Transport{
			TLSClientConfig: o.TLS.Clone(), Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 2, IdleConnTimeout: 90 * time.Second,
		}},
		in:    make(chan item, o.MaxPending),
		flush: make(chan chan struct{}),
		done:  make(chan struct{}),
		m: metrics{
			batches:  c("batches_total", "Batches the endpoint accepted (2xx)."),
			readings: c("readings_total", "Readings the endpoint accepted."),
			retries:  c("retries_total", "Requests repeated after a network error, 5xx or 429."),
			failures: c("failed_batches_total", "Batches given up after RetryFor; their readings are redelivered."),
		},
	}
	if o.Metrics != nil {
		o.Metrics.MustRegister(s.m.batches, s.m.readings, s.m.retries, s.m.failures)
	}
	return s, nil
}

// Connect starts the sender. It does not call the endpoint: a webhook
// need not answer anything but POST.
func (s *Sink) Connect(ctx context.Context) error {
	life, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	go s.run(life)
	return nil
}

// WriteBatch queues the readings for the next POST, waiting while
// MaxPending readings are queued.
func (s *Sink) WriteBatch(ctx context.Context, batch []*bus.Reading) (sink.Ack, error) {
	a := &ack{done: make(chan struct{})}
	select {
	case s.in <- item{batch, a}:
		return a, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.done:
		return nil, errors.New("webhook: sink closed")
	}
}

// Close sends what is queued (within ctx), then stops; acks not complete fail.
func (s *Sink) Close(ctx context.Context) error {
	if s.stop == nil {
		return nil
	}
	flushed := make(chan struct{})
	select {
	case s.flush <- flushed:
		select {
		case <-flushed:
		case <-ctx.Done():
		}
	case <-s.done:
	case <-ctx.Done():
	}
	s.stop()
	<-s.done
	return nil
}

// Health is the latest request's failure, if it failed.
func (s *Sink) Health() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

func (s *Sink) run(ctx context.Context) {
	defer close(s.done)
	var batch []item
	n := 0
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	send := func() {
		timer.Stop()
		if len(batch) > 0 {
			s.send(ctx, batch, n)
		}
		batch, n = nil, 0
	}
	defer func() { // stopped: whatever is left is not delivered
		for {
			select {
			case it := <-s.in:
				batch = append(batch, it)
				continue
			default:
			}
			break
		}
		for _, it := range batch {
			it.ack.err = errors.New("webhook: stopped before sending")
			close(it.ack.done)
		}
	}()
	for {
		select {
		case it := <-s.in:
			if len(batch) == 0 {
				timer.Reset(s.o.Linger)
			}
			batch = append(batch, it)
			if n += len(it.readings); n >= s.o.BatchSize {
				send()
			}
		case <-timer.C:
			send()
		case flushed := <-s.flush:
			for more := true; more; {
				select {
				case it := <-s.in:
					batch = append(batch, it)
					if n += len(it.readings); n >= s.o.BatchSize {
						send()
					}
				default:
					more = false
				}
			}
			send()
			close(flushed)
		case <-ctx.Done():
			return
		}
	}
}

// send POSTs one batch, retrying, and completes its acks.
func (s *Sink) send(ctx context.Context, batch []item, n int) {
	readings := make([]*bus.Reading, 0, n)
	for _, it := range batch {
		readings = append(readings, it.readings...)
	}
	body, err := json.Marshal(readings)
	if err == nil {
		err = s.post(ctx, body)
	}
	if err == nil {
		s.m.batches.Inc()
		s.m.readings.Add(float64(n))
	} else {
		s.m.failures.Inc()
		s.o.Log.Warn("webhook batch not delivered; its readings will be redelivered", "url", redact(s.o.URL), "readings", n, "err", err)
	}
	for _, it := range batch {
		it.ack.err = err
		close(it.ack.done)
	}
}

// post sends body until the endpoint accepts it or RetryFor has passed.
func (s *Sink) post(ctx context.Context, body []byte) error {
	deadline := time.Now().Add(s.o.RetryFor)
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		wait, err := s.try(ctx, body)
		s.mu.Lock()
		s.lastErr = err
		s.mu.Unlock()
		if err == nil {
			return nil
		}
		if wait < 0 { // not worth repeating
			return err
		}
		if wait == 0 {
			wait, backoff = backoff, min(2*backoff, maxBackoff)
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("%w (gave up after %d attempts)", err, attempt+1)
		}
		s.m.retries.Inc()
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// try makes one request. wait is how long to wait before the next try:
// 0 for the usual backoff, more when the endpoint said so (Retry-After),
// -1 for an answer that repeating cannot change.
func (s *Sink) try(ctx context.Context, body []byte) (wait time.Duration, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.o.URL, bytes.NewReader(body))
	if err != nil {
		return -1, fmt.Errorf("webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "medpipe-webhook")
	if s.o.AuthValue != "" {
		req.Header.Set(s.o.AuthHeader, s.o.AuthValue)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // the URL may carry credentials
		}
		return 0, fmt.Errorf("webhook: POST %s: %w", redact(s.o.URL), err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return 0, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			wait = min(time.Duration(secs)*time.Second, maxBackoff)
		}
		return wait, fmt.Errorf("webhook: POST %s: %s", redact(s.o.URL), resp.Status)
	case resp.StatusCode >= 500, resp.StatusCode == http.StatusRequestTimeout:
		return 0, fmt.Errorf("webhook: POST %s: %s", redact(s.o.URL), resp.Status)
	}
	// 4xx: the request is wrong (401: credentials; 413: batch too big).
	// Repeating it now would fail alike; publish redelivers it later, by
	// when an operator may have fixed the cause.
	return -1, fmt.Errorf("webhook: POST %s: %s", redact(s.o.URL), resp.Status)
}

// redact hides a password in a URL.
func redact(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}
