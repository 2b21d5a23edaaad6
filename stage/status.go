package stage

import (
	"context"
	"log/slog"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultStatusEvery is the status line's interval in the commands that
// print one (up, simulate).
const DefaultStatusEvery = 5 * time.Second

// StatusLine logs the pipeline's counters and rates every interval.
func StatusLine(ctx context.Context, log *slog.Logger, g prometheus.Gatherer, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	names := []struct{ label, metric string }{
		{"frames_in", "medpipe_ingest_frames_total"},
		{"readings_out", "medpipe_decrypt_readings_total"},
		{"mqtt_messages", "medpipe_publish_mqtt_messages_total"},
		{"dead_letters", "medpipe_decrypt_deadletters_total"},
	}
	errorMetrics := []string{"medpipe_ingest_connection_errors_total", "medpipe_ingest_publish_errors_total", "medpipe_decrypt_publish_errors_total", "medpipe_publish_mqtt_errors_total"}
	prev := map[string]float64{}
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			sums := gatherSums(g)
			secs := now.Sub(last).Seconds()
			last = now
			// Numbers as numbers (slog attributes, not "50 (10/s)" strings),
			// so that a JSON log is read by a machine without parsing text.
			attrs := make([]any, 0, 2*len(names)+2)
			for _, n := range names {
				v := sums[n.metric]
				rate := math.Round((v-prev[n.metric])/secs*10) / 10
				attrs = append(attrs, slog.Int64(n.label, int64(v)), slog.Float64(n.label+"_per_s", rate))
				prev[n.metric] = v
			}
			var errs float64
			for _, m := range errorMetrics {
				errs += sums[m]
			}
			attrs = append(attrs, slog.Int64("errors", int64(errs)), slog.Int64("connections", int64(sums["medpipe_ingest_connections_active"])))
			log.Info("status", attrs...)
		}
	}
}

// gatherSums sums every counter and gauge by metric name over its labels.
func gatherSums(g prometheus.Gatherer) map[string]float64 {
	out := map[string]float64{}
	mfs, err := g.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				out[mf.GetName()] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[mf.GetName()] += m.GetGauge().GetValue()
			}
		}
	}
	return out
}
