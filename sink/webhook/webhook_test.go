package webhook

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/sink"
)

// endpoint is a real HTTP server on loopback that records what it accepts
// and answers with the statuses queued in fail first.
type endpoint struct {
	mu       sync.Mutex
	fail     []int
	got      []*bus.Reading
	requests int
	auth     []string
	srv      *httptest.Server
}

func newEndpoint(t *testing.T, fail ...int) *endpoint {
	e := &endpoint{fail: fail}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.requests++
		e.auth = append(e.auth, r.Header.Get("Authorization"))
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if len(e.fail) > 0 {
			code := e.fail[0]
			e.fail = e.fail[1:]
			if code == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "1")
			}
			w.WriteHeader(code)
			return
		}
		var rs []*bus.Reading
		if err := json.NewDecoder(r.Body).Decode(&rs); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		e.got = append(e.got, rs...)
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *endpoint) readings() []*bus.Reading {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*bus.Reading(nil), e.got...)
}

func readings(n int) []*bus.Reading {
	rs := make([]*bus.Reading, n)
	for i := range rs {
		rs[i] = &bus.Reading{Device: "dev", RawSeq: uint64(i + 1)}
	}
	return rs
}

func TestWebhook(t *testing.T) {
	tests := []struct {
		name      string
		fail      []int
		retryFor  time.Duration
		wantErr   string
		wantTries int
	}{
		{name: "accepted", wantTries: 1},
		{name: "5xx then accepted", fail: []int{500, 502}, wantTries: 3},
		{name: "429 honours Retry-After", fail: []int{429}, wantTries: 2},
		{name: "4xx is not repeated", fail: []int{401}, wantErr: "401", wantTries: 1},
		{name: "gives up after RetryFor", fail: []int{503, 503, 503, 503, 503, 503, 503, 503}, retryFor: 500 * time.Millisecond, wantErr: "503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEndpoint(t, tt.fail...)
			s, err := New(Options{URL: e.srv.URL + "/hook", AuthValue: "Bearer t0k3n", BatchSize: 10, RetryFor: tt.retryFor})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			if err := s.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			w := sink.NewWindow(100)
			for _, r := range readings(10) {
				a, err := s.WriteBatch(ctx, []*bus.Reading{r})
				if err != nil {
					t.Fatal(err)
				}
				if err := w.Add(ctx, a); err != nil {
					t.Fatal(err)
				}
			}
			err = w.Drain(ctx)
			if err := s.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ack: %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "t0k3n") {
					t.Fatal("the error carries the secret")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := e.readings()
			for i, r := range got {
				if r.RawSeq != uint64(i+1) {
					t.Fatalf("reading %d has raw_seq %d: out of order", i+1, r.RawSeq)
				}
			}
			if len(got) != 10 || e.requests != tt.wantTries || e.auth[0] != "Bearer t0k3n" {
				t.Fatalf("got %d readings in %d requests (want 10 in %d), auth %q", len(got), e.requests, tt.wantTries, e.auth[0])
			}
		})
	}
}

// TestWebhookBatchesAndCloseFlushes: readings go out BatchSize at a time,
// the rest after Linger, and Close sends what is queued.
func TestWebhookBatchesAndCloseFlushes(t *testing.T) {
	e := newEndpoint(t)
	s, err := New(Options{URL: e.srv.URL, BatchSize: 100, Linger: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	var acks []sink.Ack
	for _, r := range readings(250) {
		a, err := s.WriteBatch(ctx, []*bus.Reading{r})
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, a)
	}
	if err := acks[199].Wait(ctx); err != nil { // two full batches, without waiting for Linger
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for i, a := range acks {
		if err := a.Wait(ctx); err != nil {
			t.Fatalf("ack %d: %v", i, err)
		}
	}
	if n := len(e.readings()); n != 250 || e.requests != 3 {
		t.Fatalf("%d readings in %d requests, want 250 in 3", n, e.requests)
	}
}

func TestWebhookRefusesBadURL(t *testing.T) {
	for _, u := range []string{"", "ftp://x/y", "http://", "http://user:secret@%zz"} {
		if _, err := New(Options{URL: u}); err == nil || strings.Contains(err.Error(), "secret") {
			t.Errorf("URL %q: %v", u, err)
		}
	}
}
