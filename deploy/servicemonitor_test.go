package deploy

import (
	"testing"

	"k8s.io/apimachinery/pkg/labels"
)

// TestHelmServiceMonitor renders the chart with the Prometheus Operator's
// ServiceMonitor on (decoded strictly into the operator's own API type) and
// checks that it scrapes every stage's pods on their http port as job
// "medpipe", the job deploy/prometheus/alerts.yaml expects; off by default,
// since the CRD may be missing.
func TestHelmServiceMonitor(t *testing.T) {
	if r := renderChart(t, ""); len(r.monitors) != 0 {
		t.Fatalf("ServiceMonitor rendered by default: %v", r.kinds)
	}
	r := renderChart(t, "serviceMonitor: {enabled: true, labels: {release: kube-prometheus-stack}}")
	sm := r.monitors["medpipe"]
	if sm == nil || len(r.monitors) != 1 {
		t.Fatalf("want one ServiceMonitor medpipe, got %v", r.kinds)
	}
	if sm.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels %v lack the values' labels", sm.Labels)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "http" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Fatalf("endpoints %+v: want port http, /metrics", sm.Spec.Endpoints)
	}
	sel := labels.SelectorFromSet(sm.Spec.Selector.MatchLabels)
	for _, comp := range []string{"ingest", "decrypt", "publish"} {
		var scraped bool
		for name, s := range r.services {
			if !sel.Matches(labels.Set(s.Labels)) {
				continue
			}
			if s.Labels[sm.Spec.JobLabel] != "medpipe" {
				t.Errorf("Service %s: job label %s=%q, want medpipe", name, sm.Spec.JobLabel, s.Labels[sm.Spec.JobLabel])
			}
			var port bool
			for _, p := range s.Spec.Ports {
				port = port || p.Name == sm.Spec.Endpoints[0].Port
			}
			if !port {
				t.Errorf("Service %s has no port named %s", name, sm.Spec.Endpoints[0].Port)
			}
			// TestHelmChart checks every Service's pods open its target ports.
			if podSelectedBy(r, s.Spec.Selector) == &r.deployments["medpipe-"+comp].Spec.Template {
				scraped = true
			}
		}
		if !scraped {
			t.Errorf("no Service the ServiceMonitor selects reaches %s's pods", comp)
		}
	}
	for _, comp := range []string{"node-red", "mosquitto"} {
		for name, s := range r.services {
			if sel.Matches(labels.Set(s.Labels)) && podSelectedBy(r, s.Spec.Selector) == &r.deployments["medpipe-"+comp].Spec.Template {
				t.Errorf("ServiceMonitor scrapes %s through %s, which has no medpipe /metrics", comp, name)
			}
		}
	}
}
