package publish

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/sink/webhook"
	"github.com/medpipe/medpipe/testkit"
)

// TestBridgeToWebhook: the bridge feeds READINGS to the webhook sink of a
// real HTTP server that refuses the first requests (503): every reading
// arrives, each device's in order, and READINGS is acknowledged.
func TestBridgeToWebhook(t *testing.T) {
	v := newEnv(t)
	var mu sync.Mutex
	var refused int
	got := map[string][]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("X-Api-Key") != "k3y" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if refused < 3 {
			refused++
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var rs []*bus.Reading
		if err := json.NewDecoder(r.Body).Decode(&rs); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for _, r := range rs {
			got[r.Device] = append(got[r.Device], r.Values.PulseSig)
		}
	}))
	defer srv.Close()
	s, err := webhook.New(webhook.Options{URL: srv.URL, AuthHeader: "X-Api-Key", AuthValue: "k3y", BatchSize: 50, Linger: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	devs := []string{"a", "b", "c", "d"}
	const n = 200
	v.publishReadings(t, devs, 1, n)
	v.runBridge(t, Options{Sink: s})
	testkit.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range devs {
			if len(got[d]) < n {
				return fmt.Errorf("%s: %d of %d readings", d, len(got[d]), n)
			}
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for _, d := range devs {
		for i, seq := range got[d][:n] {
			if want := reading(d, i+1).Values.PulseSig; seq != want {
				t.Fatalf("%s: reading %d carries %s, want %s", d, i+1, seq, want)
			}
		}
	}
	waitNothingPending(t, v)
}
