package stage

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/medpipe/medpipe/bus"
)

// LagInterval is how often a process asks JetStream for its consumers'
// lag: one consumer-info request per partition and stage each time, a
// small fixed cost whatever the message rate.
const LagInterval = 10 * time.Second

// lagWatch is one stage's durable consumers, whose lag a process reports.
type lagWatch struct {
	js            jetstream.JetStream
	stream, stage string
	partitions    int
}

// WatchLag reports the lag of stage's durable consumers on stream
// (<stage>-0 … <stage>-<partitions-1>) as
// medpipe_stage_consumer_lag_messages{stream,consumer}: the messages not
// yet delivered plus those delivered and not yet acknowledged (num_pending
// + num_ack_pending), polled every LagInterval while the process runs.
func (p *Process) WatchLag(js jetstream.JetStream, stream, stage string, partitions int) {
	p.lags = append(p.lags, lagWatch{js: js, stream: stream, stage: stage, partitions: partitions})
}

// lagGauge is the process's lag gauge, registered on first use.
func (p *Process) lagGauge() *prometheus.GaugeVec {
	if p.lag == nil {
		p.lag = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "medpipe_stage_consumer_lag_messages",
			Help: "Messages of a durable consumer not yet acknowledged: pending delivery plus awaiting ack (num_pending + num_ack_pending), polled every 10 s.",
		}, []string{"stream", "consumer"})
		p.reg.MustRegister(p.lag)
	}
	return p.lag
}

// pollLag updates the lag gauge every interval until ctx ends. A consumer
// that cannot be asked keeps its last value; the stage's own readiness
// check reports the connection.
func pollLag(ctx context.Context, g *prometheus.GaugeVec, watches []lagWatch, interval time.Duration, log *slog.Logger) {
	gauges := map[string]prometheus.Gauge{}
	poll := func() {
		for _, w := range watches {
			for part := range w.partitions {
				name := bus.ConsumerConfig(w.stage, part, "", 0).Durable
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				c, err := w.js.Consumer(rctx, w.stream, name) // one CONSUMER.INFO request
				cancel()
				if err != nil {
					if ctx.Err() == nil {
						log.Debug("consumer lag not read", "stream", w.stream, "consumer", name, "err", err)
					}
					continue
				}
				key := w.stream + "/" + name
				if gauges[key] == nil {
					gauges[key] = g.WithLabelValues(w.stream, name)
				}
				info := c.CachedInfo()
				gauges[key].Set(float64(info.NumPending) + float64(info.NumAckPending))
			}
		}
	}
	poll()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			poll()
		}
	}
}
