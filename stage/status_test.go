package stage

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/testkit"
)

// TestStatusLineNumbers checks that the status line's figures are JSON
// numbers, not text like "50 (10/s)".
func TestStatusLineNumbers(t *testing.T) {
	reg := prometheus.NewRegistry()
	frames := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "medpipe_ingest_frames_total"}, []string{"protocol"})
	reg.MustRegister(frames)
	frames.WithLabelValues("legacy").Add(50)
	var buf testkit.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go StatusLine(ctx, slog.New(slog.NewJSONHandler(&buf, nil)), reg, 20*time.Millisecond)
	var line map[string]any
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		first, _, _ := strings.Cut(buf.String(), "\n")
		return json.Unmarshal([]byte(first), &line)
	})
	if v, ok := line["frames_in"].(float64); !ok || v != 50 {
		t.Errorf("frames_in = %#v, want the number 50", line["frames_in"])
	}
	if _, ok := line["frames_in_per_s"].(float64); !ok {
		t.Errorf("frames_in_per_s = %#v, want a number", line["frames_in_per_s"])
	}
	for _, k := range []string{"readings_out", "mqtt_messages", "dead_letters", "errors", "connections"} {
		if _, ok := line[k].(float64); !ok {
			t.Errorf("%s = %#v, want a number", k, line[k])
		}
	}
}
