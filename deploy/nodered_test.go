package deploy

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/testkit"
)

// TestNodeREDDashboard runs `medpipe up` with simulated devices and a real
// Node-RED with deploy/node-red's flows, subscribed to up's embedded MQTT
// listener. It asserts from Node-RED's side (the flow's /medpipe/devices
// endpoint) that readings of every simulated device arrived, then loads the
// dashboard in headless Chromium, asserts that the ECG chart has drawn data
// points, and keeps a screenshot (MEDPIPE_ARTIFACTS, default
// test-artifacts/ at the repository root).
func TestNodeREDDashboard(t *testing.T) {
	nodeRED := filepath.Join("node-red", "node_modules", "node-red", "red.js")
	if _, err := os.Stat(nodeRED); err != nil {
		t.Fatalf("Node-RED is not installed: run ./scripts/test.sh (it runs npm ci in deploy/node-red): %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	const devices = 6
	bin := testkit.MedpipeBinary(t)
	mqttPort, natsPort := freePort(t), freePort(t)
	dataDir := t.TempDir()
	up := testkit.StartProcess(t, "up", nil, bin, "up", "--simulate", strconv.Itoa(devices), "--rate", "5", "--data-dir", dataDir,
		"--nats-port", strconv.Itoa(natsPort), "--mqtt-port", strconv.Itoa(mqttPort), "--monitor-port", "-2",
		"--listen", "127.0.0.1:"+strconv.Itoa(freePort(t)), "--http", "127.0.0.1:"+strconv.Itoa(freePort(t)), "--status-every", "0")
	_ = up

	// Node-RED in a throw-away user dir holding our flows and settings, with
	// the installed modules linked in.
	userDir := t.TempDir()
	for _, f := range []string{"flows.json", "settings.js"} {
		b, err := os.ReadFile(filepath.Join("node-red", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(userDir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// up's MQTT wants a login: the dashboard one it generated, as the broker
	// node's credentials (plain JSON with credentialSecret false).
	var pw string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if pw, err = bus.ReadCredential(filepath.Join(dataDir, bus.CredentialsDir), bus.RoleDashboard); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	cred, err := json.Marshal(map[string]map[string]string{"broker": {"user": string(bus.RoleDashboard), "password": pw}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(userDir, "flows_cred.json"), cred, 0o600); err != nil {
		t.Fatal(err)
	}
	modules, err := filepath.Abs(filepath.Join("node-red", "node_modules"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(modules, filepath.Join(userDir, "node_modules")); err != nil {
		t.Fatal(err)
	}
	nrPort := freePort(t)
	testkit.StartProcess(t, "node-red", []string{"PORT=" + strconv.Itoa(nrPort), "HOST=127.0.0.1", "MQTT_HOST=127.0.0.1", "MQTT_PORT=" + strconv.Itoa(mqttPort), "MQTT_PREFIX=Pico"},
		"node", nodeRED, "--settings", filepath.Join(userDir, "settings.js"), "--userDir", userDir)
	base := "http://127.0.0.1:" + strconv.Itoa(nrPort)

	// Node-RED's side: every simulated device, with readings.
	var seen struct {
		Devices []struct {
			ID       string `json:"id"`
			Readings int    `json:"readings"`
			Online   bool   `json:"online"`
		} `json:"devices"`
	}
	for {
		if resp, err := http.Get(base + "/medpipe/devices"); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&seen)
			resp.Body.Close()
			withReadings := 0
			for _, d := range seen.Devices {
				if d.Readings >= 10 && d.Online {
					withReadings++
				}
			}
			if withReadings == devices {
				break
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Node-RED saw %+v, want %d devices online with readings", seen.Devices, devices)
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Logf("Node-RED received readings of all %d devices: %+v", devices, seen.Devices)

	// The dashboard in a real browser: the ECG chart draws the selected
	// device's signal in its first series colour.
	bctx := testkit.Browser(ctx, t)
	var points int
	deadline := time.Now().Add(60 * time.Second)
	if err := chromedp.Run(bctx, chromedp.Navigate(base+"/dashboard/patients")); err != nil {
		t.Fatalf("load the dashboard: %v", err)
	}
	for points < 200 {
		if time.Now().After(deadline) {
			t.Fatalf("the ECG chart drew %d pixels of its series colour after 60 s", points)
		}
		time.Sleep(time.Second)
		if err := chromedp.Run(bctx, chromedp.Evaluate(countSeriesPixels, &points)); err != nil {
			t.Fatalf("inspect the chart: %v", err)
		}
	}
	var png []byte
	if err := chromedp.Run(bctx, chromedp.Sleep(2*time.Second), chromedp.FullScreenshot(&png, 100)); err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("MEDPIPE_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "dashboard.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("the ECG chart drew %d pixels of data; screenshot in %s", points, shot)
}

// countSeriesPixels counts, on the first chart canvas of the page (the ECG
// chart; ECharts draws on canvas), the pixels of the first series colour
// #0095FF: zero for an empty chart, hundreds once a line is drawn.
const countSeriesPixels = `(() => {
  const canvases = [...document.querySelectorAll('canvas')];
  let n = 0;
  for (const c of canvases) {
    let data;
    try { data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; } catch (e) { continue; }
    for (let i = 0; i < data.length; i += 4) {
      if (Math.abs(data[i] - 0) < 40 && Math.abs(data[i+1] - 149) < 40 && Math.abs(data[i+2] - 255) < 40 && data[i+3] > 0) n++;
    }
    if (n > 0) break;
  }
  return n;
})()`

func TestMain(m *testing.M) {
	code := m.Run()
	testkit.RemoveBuilt()
	os.Exit(code)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
