package e2e

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/medpipe/medpipe/testkit"
)

// TestSimulateServesMetrics: `medpipe simulate --http` says where it
// serves in its start-up line, is healthy once its devices are connected,
// counts what they send in /metrics, and stops cleanly on SIGTERM.
func TestSimulateServesMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// An edge that takes everything: legacy devices need no answer.
	edge := testkit.ServeTCP(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	p, addr := startServing(ctx, t, "simulate", nil, "simulate", "--server", edge.String(), "--devices", "3", "--rate", "50",
		"--protocol", "legacy", "--keys-out", filepath.Join(t.TempDir(), "keys.jsonl"), "--status-every", "0")
	for {
		m := scrape(t, addr)
		if m["medpipe_simulator_readings_sent_total"] >= 30 {
			if m["medpipe_simulator_devices_connected"] != 3 || m["medpipe_simulator_errors_total"] != 0 {
				t.Fatalf("metrics %v", m)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("readings sent did not reach 30: %v", m)
		case <-time.After(100 * time.Millisecond):
		}
	}
	p.Stop(t, 10*time.Second)
}

// scrape reads the medpipe_ samples of a /metrics page.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasPrefix(name, "medpipe_") {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			m[name] = f
		}
	}
	return m
}
