package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	psaapi "k8s.io/pod-security-admission/api"
	psapolicy "k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

// chartDir is the Helm chart, the one Kubernetes deployment shipped.
var chartDir = filepath.Join("helm", "medpipe")

// rendered is a chart rendered by Helm's own engine, decoded (strictly: an
// unknown field fails) into the Kubernetes API types.
type rendered struct {
	deployments  map[string]*appsv1.Deployment
	services     map[string]*corev1.Service
	configMaps   map[string]*corev1.ConfigMap
	pvcs         map[string]*corev1.PersistentVolumeClaim
	hpas         map[string]*autoscalingv2.HorizontalPodAutoscaler
	pdbs         map[string]*policyv1.PodDisruptionBudget
	netpols      map[string]*networkingv1.NetworkPolicy
	monitors     map[string]*monitoringv1.ServiceMonitor
	kinds        []string
	manifestText string
}

func renderChart(t *testing.T, overrides string) *rendered {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(overrides), &vals); err != nil {
		t.Fatal(err)
	}
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{Name: "medpipe", Namespace: "medpipe", IsInstall: true}, chartutil.DefaultCapabilities)
	if err != nil {
		t.Fatal(err)
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		t.Fatalf("render chart (%s): %v", overrides, err)
	}
	r := &rendered{
		deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{}, configMaps: map[string]*corev1.ConfigMap{},
		pvcs: map[string]*corev1.PersistentVolumeClaim{}, hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, netpols: map[string]*networkingv1.NetworkPolicy{},
		monitors: map[string]*monitoringv1.ServiceMonitor{},
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		if strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		r.manifestText += files[name]
		for doc := range strings.SplitSeq(files[name], "\n---") {
			if strings.TrimSpace(strings.ReplaceAll(doc, "---", "")) == "" {
				continue
			}
			var head struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			if head.Kind == "" {
				continue // only comments
			}
			r.kinds = append(r.kinds, head.Kind)
			var obj any
			switch head.Kind {
			case "Deployment":
				o := &appsv1.Deployment{}
				r.deployments[head.Metadata.Name], obj = o, o
			case "Service":
				o := &corev1.Service{}
				r.services[head.Metadata.Name], obj = o, o
			case "ConfigMap":
				o := &corev1.ConfigMap{}
				r.configMaps[head.Metadata.Name], obj = o, o
			case "PersistentVolumeClaim":
				o := &corev1.PersistentVolumeClaim{}
				r.pvcs[head.Metadata.Name], obj = o, o
			case "HorizontalPodAutoscaler":
				o := &autoscalingv2.HorizontalPodAutoscaler{}
				r.hpas[head.Metadata.Name], obj = o, o
			case "PodDisruptionBudget":
				o := &policyv1.PodDisruptionBudget{}
				r.pdbs[head.Metadata.Name], obj = o, o
			case "NetworkPolicy":
				o := &networkingv1.NetworkPolicy{}
				r.netpols[head.Metadata.Name], obj = o, o
			case "ServiceMonitor":
				o := &monitoringv1.ServiceMonitor{}
				r.monitors[head.Metadata.Name], obj = o, o
			default:
				t.Errorf("%s: unexpected kind %s (Secrets are created apart, never by the chart)", name, head.Kind)
				continue
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Errorf("%s: %s %s does not decode strictly into the API type: %v", name, head.Kind, head.Metadata.Name, err)
			}
		}
	}
	return r
}

// TestHelmChart renders the chart with Helm's engine (defaults, the
// autoscaler, an external broker) and checks what issue 18 found broken:
// every pod passes the "restricted" Pod Security Standard (checked by
// Kubernetes' own pod-security-admission policy) with numeric
// runAsUser/runAsGroup/fsGroup; no Secret is in the chart; decrypt has
// fixed replicas or an autoscaler, never both, and mounts no secret but its
// own NATS password; liveness is /livez and readiness /readyz; each stage
// runs real flags with its own NATS role; the device Service keeps the
// client address; PDBs, NetworkPolicies and Services select real pods;
// the broker's config is deploy/mosquitto's.
func TestHelmChart(t *testing.T) {
	eval, err := psapolicy.NewEvaluator(psapolicy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, values string
		hpa          bool
		mosquitto    bool
	}{
		{"defaults", "", false, true},
		{"autoscaler", "decrypt: {autoscaling: {enabled: true}}", true, true},
		{"external broker", "mqtt: {url: 'tcp://emqx.mqtt.svc:1883'}\nmosquitto: {enabled: false}", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := renderChart(t, tc.values)
			cm := r.configMaps["medpipe"]
			if cm == nil {
				t.Fatal("no ConfigMap medpipe")
			}
			var cmEnv []string
			for k := range cm.Data {
				cmEnv = append(cmEnv, k)
			}
			for name, d := range r.deployments {
				pod := d.Spec.Template
				res := psapolicy.AggregateCheckResults(eval.EvaluatePod(psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}, &pod.ObjectMeta, &pod.Spec))
				if !res.Allowed {
					t.Errorf("Deployment %s violates Pod Security restricted: %s", name, res.ForbiddenDetail())
				}
				sc := pod.Spec.SecurityContext
				if sc == nil || sc.RunAsUser == nil || sc.RunAsGroup == nil || sc.FSGroup == nil || *sc.RunAsUser == 0 {
					t.Errorf("Deployment %s: runAsUser, runAsGroup and fsGroup must be numeric and non-root: %+v", name, sc)
				}
				for _, c := range pod.Spec.Containers {
					if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
						t.Errorf("Deployment %s: container %s root filesystem is writable", name, c.Name)
					}
					if c.LivenessProbe == nil || c.ReadinessProbe == nil {
						t.Errorf("Deployment %s: container %s lacks a probe", name, c.Name)
					}
				}
				if !labels.SelectorFromSet(d.Spec.Selector.MatchLabels).Matches(labels.Set(pod.Labels)) {
					t.Errorf("Deployment %s: selector does not match its pods", name)
				}
				if strings.HasPrefix(pod.Spec.Containers[0].Image, "medpipe/medpipe:") {
					checkStage(t, r, d, cmEnv)
				}
			}
			for _, must := range []string{"medpipe-ingest", "medpipe-decrypt", "medpipe-publish", "medpipe-node-red"} {
				if r.deployments[must] == nil {
					t.Errorf("no Deployment %s", must)
				}
			}
			if (r.deployments["medpipe-mosquitto"] != nil) != tc.mosquitto {
				t.Errorf("Mosquitto Deployment rendered: %v, want %v", r.deployments["medpipe-mosquitto"] != nil, tc.mosquitto)
			}

			decrypt := r.deployments["medpipe-decrypt"]
			hpa := r.hpas["medpipe-decrypt"]
			if (hpa != nil) != tc.hpa || (decrypt.Spec.Replicas != nil) == tc.hpa {
				t.Errorf("decrypt: autoscaler %v and replicas %v: want exactly one of them (autoscaler wanted: %v)", hpa != nil, decrypt.Spec.Replicas, tc.hpa)
			}
			if hpa != nil && (hpa.Spec.ScaleTargetRef.Name != decrypt.Name || hpa.Spec.ScaleTargetRef.Kind != "Deployment") {
				t.Errorf("the autoscaler scales %+v", hpa.Spec.ScaleTargetRef)
			}

			devices := r.services["medpipe-devices"]
			if devices == nil || devices.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
				t.Errorf("device Service: want externalTrafficPolicy Local: %+v", devices)
			}
			for name, s := range r.services {
				pod := podSelectedBy(r, s.Spec.Selector)
				if pod == nil {
					t.Errorf("Service %s selects no pod", name)
					continue
				}
				for _, p := range s.Spec.Ports {
					if !containerHasPort(pod, p.TargetPort.String()) {
						t.Errorf("Service %s targets port %s its pods do not open", name, p.TargetPort.String())
					}
				}
			}
			for _, comp := range []string{"ingest", "decrypt", "publish"} {
				pdb := r.pdbs["medpipe-"+comp]
				if pdb == nil || pdb.Spec.MinAvailable == nil {
					t.Errorf("no PodDisruptionBudget with minAvailable for %s", comp)
					continue
				}
				if podSelectedBy(r, pdb.Spec.Selector.MatchLabels) != &r.deployments["medpipe-"+comp].Spec.Template {
					t.Errorf("PodDisruptionBudget %s does not select %s's pods", pdb.Name, comp)
				}
				np := r.netpols["medpipe-"+comp]
				if np == nil || podSelectedBy(r, np.Spec.PodSelector.MatchLabels) == nil {
					t.Errorf("no NetworkPolicy selecting %s", comp)
				}
			}
			if tc.mosquitto {
				mcm := r.configMaps["medpipe-mosquitto"]
				for _, f := range []string{"mosquitto.conf", "acl", "start.sh"} {
					want, err := os.ReadFile(filepath.Join("mosquitto", f))
					if err != nil {
						t.Fatal(err)
					}
					if strings.TrimSpace(mcm.Data[f]) != strings.TrimSpace(string(want)) {
						t.Errorf("the chart's Mosquitto %s differs from deploy/mosquitto/%s", f, f)
					}
				}
			}
			// Node-RED: login and MQTT account from Secrets, broker the chart's.
			nr := r.deployments["medpipe-node-red"].Spec.Template.Spec.Containers[0]
			env := map[string]string{}
			for _, e := range nr.Env {
				env[e.Name] = e.Value
			}
			wantHost := "medpipe-mosquitto"
			if !tc.mosquitto {
				wantHost = "emqx.mqtt.svc"
			}
			if env["MQTT_HOST"] != wantHost || env["MQTT_PORT"] != "1883" || env["MQTT_USER"] != "dashboard" ||
				env["NODE_RED_ADMIN_PASSWORD_FILE"] == "" || env["MQTT_PASSWORD_FILE"] == "" || env["HOST"] != "0.0.0.0" {
				t.Errorf("Node-RED environment: %v", env)
			}
		})
	}
}

// checkStage checks one medpipe stage's pod.
func checkStage(t *testing.T, r *rendered, d *appsv1.Deployment, cmEnv []string) {
	t.Helper()
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	where := "Deployment " + d.Name
	if *pod.SecurityContext.RunAsUser != 65532 || *pod.SecurityContext.RunAsGroup != 65532 || *pod.SecurityContext.FSGroup != 65532 {
		t.Errorf("%s: want uid/gid/fsGroup 65532 (the image's user): %+v", where, pod.SecurityContext)
	}
	(invocation{where: where, args: c.Args, env: cmEnv}).check(t)
	role := strings.TrimPrefix(d.Name, "medpipe-")
	if c.Args[0] != role || flagValue(c.Args, "nats-user") != role {
		t.Errorf("%s: runs %q as NATS user %q, want %s as %s", where, c.Args[0], flagValue(c.Args, "nats-user"), role, role)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	cm := r.configMaps["medpipe"]
	if fmt.Sprintf(":%d", ports["http"]) != portOf(cm.Data["MEDPIPE_HTTP"]) {
		t.Errorf("%s: port http %d, but MEDPIPE_HTTP is %s", where, ports["http"], cm.Data["MEDPIPE_HTTP"])
	}
	if l := flagValue(c.Args, "listen"); l != "" && fmt.Sprintf(":%d", ports["devices"]) != portOf(l) {
		t.Errorf("%s: port devices %d, but --listen %s", where, ports["devices"], l)
	}
	for probe, want := range map[*corev1.Probe]string{c.LivenessProbe: "/livez", c.ReadinessProbe: "/readyz"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != want || probe.HTTPGet.Port.String() != "http" {
			t.Errorf("%s: probe %+v, want %s on port http", where, probe, want)
		}
	}
	if len(c.Resources.Requests) == 0 {
		t.Errorf("%s: no resource requests", where)
	}
	// Secrets: the NATS password of its own role only; the MQTT password
	// only for publish; nothing else (decrypt reads keys from the registry).
	mounted := map[string]string{}
	for _, v := range pod.Volumes {
		if v.Secret == nil {
			continue
		}
		var keys []string
		for _, it := range v.Secret.Items {
			keys = append(keys, it.Key)
		}
		if len(keys) == 0 {
			t.Errorf("%s: mounts every key of Secret %s", where, v.Secret.SecretName)
		}
		mounted[v.Secret.SecretName] = strings.Join(keys, ",")
	}
	want := map[string]string{"medpipe-nats": role}
	if role == "publish" {
		want["medpipe-mqtt"] = "medpipe"
	}
	if fmt.Sprint(mounted) != fmt.Sprint(want) {
		t.Errorf("%s mounts secrets %v, want only %v", where, mounted, want)
	}
}

func podSelectedBy(r *rendered, sel map[string]string) *corev1.PodTemplateSpec {
	for _, d := range r.deployments {
		if len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(d.Spec.Template.Labels)) {
			return &d.Spec.Template
		}
	}
	return nil
}

func containerHasPort(pod *corev1.PodTemplateSpec, name string) bool {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == name || fmt.Sprint(p.ContainerPort) == name {
				return true
			}
		}
	}
	return false
}

// TestHelmNATSValues: the values for the official NATS chart ask for a
// 3-node cluster with JetStream (the stages' MEDPIPE_REPLICAS is 3).
func TestHelmNATSValues(t *testing.T) {
	vals := readYAMLDocs(t, filepath.Join("helm", "nats-values.yaml"))[0]
	cfg := m(vals["config"])
	if m(cfg["cluster"])["enabled"] != true || m(cfg["cluster"])["replicas"] != 3 || m(cfg["jetstream"])["enabled"] != true {
		t.Errorf("nats-values.yaml: want a 3-node cluster with JetStream: %v", cfg)
	}
}
