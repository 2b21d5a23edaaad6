package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/testkit/browser"
)

// legacyFlows is where the previous system's dashboard flows go: see
// node-red/legacy/README.md for their source.
var legacyFlows = filepath.Join("node-red", "legacy", "flows.json")

// legacyWidgets are the dashboard 1 widget types that show a value.
var legacyWidgets = map[string]bool{"ui_gauge": true, "ui_text": true, "ui_chart": true, "ui_slider": true}

// fedWidgets returns the ids of the value widgets an "mqtt in" node feeds,
// directly or through other nodes (the accelerometer goes through a slider
// to a gauge), each with the topic that feeds it.
func fedWidgets(nodes []map[string]any) map[string]string {
	byID := map[string]map[string]any{}
	for _, n := range nodes {
		byID[fmt.Sprint(n["id"])] = n
	}
	fed := map[string]string{}
	for _, n := range nodes {
		if n["type"] != "mqtt in" {
			continue
		}
		topic := fmt.Sprint(n["topic"])
		queue := []map[string]any{n}
		for len(queue) > 0 {
			cur := queue[0]
			queue = queue[1:]
			ws, _ := cur["wires"].([]any)
			for _, w := range ws {
				outs, _ := w.([]any)
				for _, to := range outs {
					next := byID[fmt.Sprint(to)]
					if next == nil {
						continue
					}
					id := fmt.Sprint(next["id"])
					if _, seen := fed[id]; seen {
						continue
					}
					if legacyWidgets[fmt.Sprint(next["type"])] {
						fed[id] = topic
					}
					queue = append(queue, next)
				}
			}
		}
	}
	return fed
}

// v1Hook records, in window.__legacy, the widget ids the dashboard 1
// socket.io connection delivers values to ("update-value").
var v1Hook = socketHook(`(() => {
  const seen = window.__legacy = {};
  return (name, msg) => {
    if (name !== 'update-value' || !msg || !msg.id) return;
    seen[msg.id] = (seen[msg.id] || 0) + 1;
  };
})()`)

// TestLegacyDashboard runs the previous system's Node-RED flows (node-red-
// dashboard 1.x, devices iot_med_dev_01..05) against `medpipe up`: the flows
// are used as they are but for the broker address (every mqtt-broker node's
// broker and port, which pointed at the old EMQX container), the five
// devices come from a keys file and `medpipe simulate`, and the dashboard
// page in headless Chromium must receive values for every gauge, text,
// chart and slider that a topic feeds.
func TestLegacyDashboard(t *testing.T) {
	raw, err := os.ReadFile(legacyFlows)
	if os.IsNotExist(err) {
		t.Skipf("%s is not in the tree (see node-red/legacy/README.md for where it comes from and why)", legacyFlows)
	}
	if err != nil {
		t.Fatal(err)
	}
	dashboard := filepath.Join("node-red", "legacy", "node_modules", "node-red-dashboard", "package.json")
	if _, err := os.Stat(dashboard); err != nil {
		t.Fatalf("node-red-dashboard is not installed: run ./scripts/test.sh (it runs npm ci in deploy/node-red/legacy): %v", err)
	}
	var nodes []map[string]any
	if err := json.Unmarshal(raw, &nodes); err != nil {
		t.Fatalf("%s: %v", legacyFlows, err)
	}
	fed := fedWidgets(nodes)
	devices := map[string]bool{}
	for _, topic := range fed {
		if parts := strings.Split(topic, "/"); len(parts) > 2 {
			devices[parts[1]] = true
		}
	}
	if len(fed) < 5 || len(devices) < 5 {
		t.Fatalf("%s feeds %d widgets of %d devices: not the five-device dashboard", legacyFlows, len(fed), len(devices))
	}

	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()
	dir := t.TempDir()
	ids := make([]string, 0, len(devices))
	for id := range devices {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var keys strings.Builder
	for i, id := range ids {
		fmt.Fprintf(&keys, `{"id":%q,"key":"%016d","iv":"%016d"}`+"\n", id, i+1, 1000+i)
	}
	keysFile := filepath.Join(dir, "keys.jsonl")
	if err := os.WriteFile(keysFile, []byte(keys.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := testkit.MedpipeBinary(t)
	mqttPort, listen := testkit.FreePort(t), "127.0.0.1:"+strconv.Itoa(testkit.FreePort(t))
	dataDir := filepath.Join(dir, "data")
	testkit.StartProcess(t, "up", nil, bin, "up", "--keys", keysFile, "--address-every", "5",
		"--data-dir", dataDir, "--nats-port", strconv.Itoa(testkit.FreePort(t)), "--mqtt-port", strconv.Itoa(mqttPort),
		"--monitor-port", "-2", "--listen", listen, "--http", "", "--status-every", "0")
	testkit.StartProcess(t, "simulate", nil, bin, "simulate", "--keys", keysFile, "--devices", strconv.Itoa(len(ids)),
		"--server", listen, "--rate", "2", "--protocol", "legacy", "--status-every", "0")

	// The one change: the broker address.
	changed := 0
	for _, n := range nodes {
		if n["type"] == "mqtt-broker" {
			n["broker"], n["port"] = "127.0.0.1", strconv.Itoa(mqttPort)
			changed++
		}
	}
	if changed == 0 {
		t.Fatalf("%s has no mqtt-broker node", legacyFlows)
	}
	flows, err := json.MarshalIndent(nodes, "", "    ")
	if err != nil {
		t.Fatal(err)
	}
	userDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(userDir, "flows.json"), flows, 0o644); err != nil {
		t.Fatal(err)
	}
	settings, err := os.ReadFile(filepath.Join("node-red", "settings.js"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(userDir, "settings.js"), settings, 0o644); err != nil {
		t.Fatal(err)
	}
	// This user dir sees only the old dashboard's nodes; Node-RED itself
	// is deploy/node-red's.
	modules, err := filepath.Abs(filepath.Join("node-red", "legacy", "node_modules"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(modules, filepath.Join(userDir, "node_modules")); err != nil {
		t.Fatal(err)
	}
	red, err := filepath.Abs(filepath.Join("node-red", "node_modules", "node-red", "red.js"))
	if err != nil {
		t.Fatal(err)
	}
	port := testkit.FreePort(t)
	// up's MQTT wants a login: settings.js puts it into flows_cred.json for
	// the flows' broker nodes, as their editor would have.
	// settings.js requires bcryptjs, which comes with deploy/node-red's Node-RED.
	shared, err := filepath.Abs(filepath.Join("node-red", "node_modules"))
	if err != nil {
		t.Fatal(err)
	}
	env := append([]string{"PORT=" + strconv.Itoa(port), "HOST=127.0.0.1", "NODE_PATH=" + shared}, dashboardLogin(ctx, t, dataDir)...)
	testkit.StartProcess(t, "node-red (legacy flows)", env,
		"node", red, "--settings", filepath.Join(userDir, "settings.js"), "--userDir", userDir)

	bctx := browser.Start(ctx, t)
	if err := chromedp.Run(bctx, chromedp.ActionFunc(func(ctx context.Context) error {
		_, err := page.AddScriptToEvaluateOnNewDocument(v1Hook).Do(ctx)
		return err
	})); err != nil {
		t.Fatal(err)
	}
	url := "http://127.0.0.1:" + strconv.Itoa(port) + "/ui/"
	// Node-RED may still be starting: load the page until the dashboard answers.
	poll(ctx, t, "the old dashboard to load", func() (bool, string) {
		var title string
		if err := chromedp.Run(bctx, chromedp.Navigate(url), chromedp.Evaluate(`document.querySelector('md-toolbar, .md-toolbar-tools') ? 'ok' : document.title`, &title)); err != nil {
			return false, err.Error()
		}
		return title == "ok", title
	})
	var missing []string
	poll(ctx, t, "every fed widget to receive values", func() (bool, string) {
		var got map[string]int
		if err := chromedp.Run(bctx, chromedp.Evaluate(`window.__legacy || {}`, &got)); err != nil {
			return false, err.Error()
		}
		missing = missing[:0]
		for id, topic := range fed {
			if got[id] == 0 {
				missing = append(missing, id+" ("+topic+")")
			}
		}
		sort.Strings(missing)
		return len(missing) == 0, fmt.Sprintf("%d of %d widgets without a value: %s", len(missing), len(fed), strings.Join(missing, ", "))
	})
	t.Logf("all %d value widgets of the %d devices received values over the old dashboard's socket.io", len(fed), len(devices))
	var png []byte
	if err := chromedp.Run(bctx, chromedp.FullScreenshot(&png, 90)); err == nil {
		art := os.Getenv("MEDPIPE_ARTIFACTS")
		if art == "" {
			art = filepath.Join("..", "test-artifacts")
		}
		if os.MkdirAll(art, 0o755) == nil {
			_ = os.WriteFile(filepath.Join(art, "legacy-dashboard.png"), png, 0o644)
		}
	}
}
