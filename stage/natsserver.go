package stage

import (
	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
)

// serverCollector exports an in-process nats-server's own figures (what its
// /varz and /jsz pages show) as medpipe_nats_server_*: medpipe up runs the
// server, so its metrics belong on up's /metrics, without a separate
// exporter scraping the monitoring port.
type serverCollector struct {
	s     *server.Server
	descs map[string]*prometheus.Desc
}

// serverMetrics names every metric the collector exports, with its help;
// names ending in _total are counters, the rest gauges.
var serverMetrics = map[string]string{
	"connections":                   "Client connections open now (NATS, MQTT, in-process).",
	"connections_total":             "Client connections accepted since start.",
	"subscriptions":                 "Subscriptions now.",
	"slow_consumers_total":          "Clients disconnected for being slow consumers.",
	"in_messages_total":             "Messages received.",
	"out_messages_total":            "Messages sent.",
	"in_bytes_total":                "Bytes received.",
	"out_bytes_total":               "Bytes sent.",
	"jetstream_storage_bytes":       "JetStream file storage used.",
	"jetstream_storage_limit_bytes": "JetStream file storage limit (max_storage).",
	"jetstream_memory_bytes":        "JetStream memory storage used.",
	"jetstream_memory_limit_bytes":  "JetStream memory storage limit (max_memory).",
	"jetstream_streams":             "JetStream streams.",
	"jetstream_consumers":           "JetStream consumers.",
	"jetstream_messages":            "Messages held in JetStream streams.",
	"jetstream_api_requests_total":  "JetStream API requests.",
	"jetstream_api_errors_total":    "JetStream API requests answered with an error.",
}

// NewServerCollector returns the collector of s's metrics. It reads s at
// each scrape (in process, no HTTP).
func NewServerCollector(s *server.Server) prometheus.Collector {
	c := &serverCollector{s: s, descs: map[string]*prometheus.Desc{}}
	for name, help := range serverMetrics {
		c.descs[name] = prometheus.NewDesc("medpipe_nats_server_"+name, help, nil, nil)
	}
	return c
}

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	emit := func(name string, v float64) {
		t := prometheus.GaugeValue
		if len(name) > 6 && name[len(name)-6:] == "_total" {
			t = prometheus.CounterValue
		}
		ch <- prometheus.MustNewConstMetric(c.descs[name], t, v)
	}
	if v, err := c.s.Varz(nil); err == nil {
		emit("connections", float64(v.Connections))
		emit("connections_total", float64(v.TotalConnections))
		emit("subscriptions", float64(v.Subscriptions))
		emit("slow_consumers_total", float64(v.SlowConsumers))
		emit("in_messages_total", float64(v.InMsgs))
		emit("out_messages_total", float64(v.OutMsgs))
		emit("in_bytes_total", float64(v.InBytes))
		emit("out_bytes_total", float64(v.OutBytes))
	}
	if j, err := c.s.Jsz(nil); err == nil && !j.Disabled {
		emit("jetstream_storage_bytes", float64(j.Store))
		emit("jetstream_storage_limit_bytes", float64(j.Config.MaxStore))
		emit("jetstream_memory_bytes", float64(j.Memory))
		emit("jetstream_memory_limit_bytes", float64(j.Config.MaxMemory))
		emit("jetstream_streams", float64(j.Streams))
		emit("jetstream_consumers", float64(j.Consumers))
		emit("jetstream_messages", float64(j.Messages))
		emit("jetstream_api_requests_total", float64(j.API.Total))
		emit("jetstream_api_errors_total", float64(j.API.Errors))
	}
}
