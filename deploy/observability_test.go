package deploy

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/medpipe/medpipe/testkit"
)

// Shipped observability files.
var (
	dashboardFile = filepath.Join("grafana", "medpipe-dashboard.json")
	alertsFile    = filepath.Join("prometheus", "alerts.yaml")
)

// prometheusOwn are series Prometheus makes itself, never on /metrics.
var prometheusOwn = []string{"up"}

// grafanaVars are the dashboard's variables as Prometheus would see them
// once Grafana has substituted them.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "${datasource}", "prometheus", "$job", ".*")

// dashboard is the part of Grafana's dashboard model the test checks.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *datasource              `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// readDashboard decodes the dashboard strictly and checks its structure:
// what Grafana needs to import it and lay it out.
func readDashboard(t *testing.T) (dashboard, []string) {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("dashboard uid %q, title %q, schemaVersion %d: want all set (schema ≥ 36)", d.UID, d.Title, d.SchemaVersion)
	}
	vars := map[string]string{}
	var exprs []string
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if q, ok := v.Query.(map[string]any); ok {
			if s, ok := q["query"].(string); ok {
				exprs = append(exprs, labelValuesExpr(s))
			}
		}
	}
	if vars["datasource"] != "datasource" {
		t.Errorf("no datasource variable: the dashboard must not name one Prometheus")
	}
	ids := map[int]bool{}
	type box struct{ x0, y0, x1, y1 int }
	var boxes []box
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		b := box{g.X, g.Y, g.X + g.W, g.Y + g.H}
		for _, o := range boxes {
			if b.x0 < o.x1 && o.x0 < b.x1 && b.y0 < o.y1 && o.y0 < b.y1 {
				t.Errorf("panel %q overlaps another", p.Title)
			}
		}
		boxes = append(boxes, b)
		if p.Type == "row" {
			continue
		}
		if !slices.Contains([]string{"stat", "timeseries", "table", "gauge", "bargauge", "heatmap"}, p.Type) {
			t.Errorf("panel %q: unexpected type %q", p.Title, p.Type)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: want the ${datasource} variable and at least one query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" || refs[tg.RefID] || tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: query %q: want an expression, a unique refId and the ${datasource} variable", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			exprs = append(exprs, tg.Expr)
		}
	}
	return d, exprs
}

// labelValuesExpr turns Grafana's label_values(metric, label) into a
// selector of the metric.
func labelValuesExpr(q string) string {
	if m := regexp.MustCompile(`^label_values\(([^,]+),`).FindStringSubmatch(q); m != nil {
		return m[1]
	}
	return q
}

// readAlerts parses the rule file with Prometheus' own rule parser (which
// also parses every expression and annotation template) and returns the
// expressions.
func readAlerts(t *testing.T) []string {
	t.Helper()
	groups, errs := rulefmt.ParseFile(alertsFile, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.Default())
	for _, err := range errs {
		t.Errorf("%v", err)
	}
	if groups == nil {
		t.FailNow()
	}
	var exprs []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %q: want an alert name, a severity and a summary", r.Alert)
			}
			exprs = append(exprs, r.Expr)
		}
	}
	return exprs
}

// metricNames parses a PromQL expression and returns the metric names it selects.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		t.Errorf("PromQL %q: %v", expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel {
					name = m.Value
				}
			}
			if name == "" {
				t.Errorf("PromQL %q: a selector without a metric name", expr)
			}
			names = append(names, name)
		}
		return nil
	})
	return names
}

// exposes reports whether a scrape has series of name: a family of that
// name, or a histogram's _bucket/_sum/_count series.
func exposes(mfs map[string]*dto.MetricFamily, name string) bool {
	if _, ok := mfs[name]; ok {
		return true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok {
			if mf, ok := mfs[base]; ok && mf.GetType() == dto.MetricType_HISTOGRAM {
				return true
			}
		}
	}
	return false
}

// scrape reads and parses a /metrics page.
func scrape(addr string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// TestDashboardAndAlertsMatchMetrics starts a real `medpipe up` with
// simulated devices (legacy and v2), scrapes its /metrics once readings
// have gone end to end, and checks that every metric the Grafana dashboard
// and the alert rules query is exposed: a renamed metric breaks this test,
// not a dashboard in production. The rule file is parsed by Prometheus'
// rule parser and every query by its PromQL parser.
func TestDashboardAndAlertsMatchMetrics(t *testing.T) {
	_, dashExprs := readDashboard(t)
	alertExprs := readAlerts(t)

	port := func() string { _, p, _ := net.SplitHostPort(testkit.FreeAddr(t)); return p }
	httpAddr := testkit.FreeAddr(t)
	up := testkit.StartMedpipe(t, "medpipe up", nil, "up", "--simulate", "6", "--protocol", "mixed", "--rate", "10",
		"--data-dir", t.TempDir(), "--nats-port", port(), "--mqtt-port", port(), "--monitor-port", "-2",
		"--listen", testkit.FreeAddr(t), "--tls-listen", "", "--http", httpAddr, "--status-every", "0")
	var mfs map[string]*dto.MetricFamily
	testkit.CheckFor(t, 2*time.Minute, 250*time.Millisecond, func() error {
		select {
		case <-up.Exited():
			t.Fatalf("medpipe up exited: %v", up.Err())
		default:
		}
		var err error
		if mfs, err = scrape(httpAddr); err != nil {
			return err
		}
		e2e := mfs["medpipe_publish_end_to_end_latency_seconds"]
		if e2e == nil || e2e.GetMetric()[0].GetHistogram().GetSampleCount() == 0 {
			return fmt.Errorf("no reading has gone end to end yet")
		}
		if mfs["medpipe_stage_consumer_lag_messages"] == nil {
			return fmt.Errorf("no consumer lag yet")
		}
		return nil
	})
	// The figures are real: every stage's latency observed, build info, lag
	// of both stages' consumers, the embedded server's storage.
	for _, h := range []string{"medpipe_ingest_store_latency_seconds", "medpipe_decrypt_frame_latency_seconds", "medpipe_publish_reading_latency_seconds"} {
		if mf := mfs[h]; mf == nil || mf.GetMetric()[0].GetHistogram().GetSampleCount() == 0 {
			t.Errorf("%s: nothing observed while readings flowed", h)
		}
	}
	if bi := mfs["medpipe_build_info"]; bi == nil || bi.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Errorf("medpipe_build_info: %v", bi)
	}
	consumers := map[string]bool{}
	for _, m := range mfs["medpipe_stage_consumer_lag_messages"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "consumer" {
				consumers[strings.Split(l.GetValue(), "-")[0]] = true
			}
		}
	}
	if !consumers["decrypt"] || !consumers["publish"] {
		t.Errorf("lag of consumers %v: want decrypt's and publish's", consumers)
	}
	if s := mfs["medpipe_nats_server_jetstream_storage_bytes"]; s == nil || s.GetMetric()[0].GetGauge().GetValue() <= 0 {
		t.Errorf("embedded server's JetStream storage: %v", s)
	}

	check := func(source string, exprs []string) {
		if len(exprs) == 0 {
			t.Errorf("%s: no queries", source)
		}
		for _, e := range exprs {
			for _, name := range metricNames(t, e) {
				if !exposes(mfs, name) && !slices.Contains(prometheusOwn, name) {
					t.Errorf("%s queries %s, which medpipe up does not expose (in %q)", source, name, e)
				}
			}
		}
	}
	check(dashboardFile, dashExprs)
	check(alertsFile, alertExprs)
}
