package deploy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/medpipe/medpipe/testkit"
)

// nodeREDScript is Node-RED's start script from deploy/node-red's install.
func nodeREDScript(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("node-red", "node_modules", "node-red", "red.js"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("Node-RED is not installed: run ./scripts/test.sh (it runs npm ci in deploy/node-red): %v", err)
	}
	return p
}

// nodeREDUserDir is a fresh user dir with the shipped settings.js and the
// installed modules linked in, as the image lays them out.
func nodeREDUserDir(t *testing.T) (dir, settings string) {
	t.Helper()
	dir = t.TempDir()
	b, err := os.ReadFile(filepath.Join("node-red", "settings.js"))
	if err != nil {
		t.Fatal(err)
	}
	settings = filepath.Join(dir, "settings.js")
	if err := os.WriteFile(settings, b, 0o644); err != nil {
		t.Fatal(err)
	}
	modules, err := filepath.Abs(filepath.Join("node-red", "node_modules"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(modules, filepath.Join(dir, "node_modules")); err != nil {
		t.Fatal(err)
	}
	return dir, settings
}

// TestNodeREDEditorNeedsLogin runs the shipped settings.js as the image
// does: the editor's admin API refuses a request without a token and
// grants one for the admin password from its secret file; the seeded flows
// connect to the shipped Mosquitto with the dashboard's read-only account
// (injected into flows_cred.json, encrypted, never in flows.json) and show
// a device the bridge publishes; and on 0.0.0.0 without a password
// Node-RED refuses to start.
func TestNodeREDEditorNeedsLogin(t *testing.T) {
	red := nodeREDScript(t)
	mqttURL, pw := startShippedMosquitto(t)
	mqttPort := mqttURL[strings.LastIndexByte(mqttURL, ':')+1:]

	t.Run("no login on 0.0.0.0 refused", func(t *testing.T) {
		dir, settings := nodeREDUserDir(t)
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "node", red, "--settings", settings, "--userDir", dir)
		cmd.Env = append(os.Environ(), "HOST=0.0.0.0", "PORT="+strconv.Itoa(testkit.FreePort(t)))
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "refusing to serve the Node-RED editor on 0.0.0.0") {
			t.Fatalf("Node-RED on 0.0.0.0 without a password: err %v, output:\n%s", err, out)
		}
	})

	dir, settings := nodeREDUserDir(t)
	secrets := t.TempDir()
	const adminPassword = "correct horse battery staple"
	for name, v := range map[string]string{"admin": adminPassword, "dashboard": pw["dashboard"]} {
		if err := os.WriteFile(filepath.Join(secrets, name), []byte(v+"\n"), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	seed, err := filepath.Abs(filepath.Join("node-red", "flows.json"))
	if err != nil {
		t.Fatal(err)
	}
	port := testkit.FreePort(t)
	testkit.StartProcess(t, "node-red", []string{
		"HOST=127.0.0.1", "PORT=" + strconv.Itoa(port), "FLOWS_SEED=" + seed,
		"NODE_RED_ADMIN_PASSWORD_FILE=" + filepath.Join(secrets, "admin"),
		"MQTT_HOST=127.0.0.1", "MQTT_PORT=" + mqttPort, "MQTT_PREFIX=Pico",
		"MQTT_USER=dashboard", "MQTT_PASSWORD_FILE=" + filepath.Join(secrets, "dashboard"),
	}, "node", red, "--settings", settings, "--userDir", dir)
	base := "http://127.0.0.1:" + strconv.Itoa(port)

	// The editor's admin API.
	deadline := time.Now().Add(90 * time.Second)
	var status int
	for {
		resp, err := http.Get(base + "/flows")
		if err == nil {
			status = resp.StatusCode
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Node-RED not answering: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if status != http.StatusUnauthorized {
		t.Fatalf("GET /flows without a token: %d, want 401", status)
	}
	token := func(password string) (string, int) {
		resp, err := http.PostForm(base+"/auth/token", url.Values{"client_id": {"node-red-admin"}, "grant_type": {"password"},
			"scope": {"*"}, "username": {"admin"}, "password": {password}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&tok)
		return tok.AccessToken, resp.StatusCode
	}
	if tok, code := token("guess"); tok != "" || code == http.StatusOK {
		t.Fatalf("a wrong admin password got a token (%d)", code)
	}
	tok, code := token(adminPassword)
	if tok == "" {
		t.Fatalf("the admin password got no token (%d)", code)
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/flows", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /flows with the admin's token: %d", resp.StatusCode)
	}

	// Seeded flows in the user dir, and no credential in clear anywhere there.
	if _, err := os.Stat(filepath.Join(dir, "flows.json")); err != nil {
		t.Fatalf("flows not seeded into the user dir: %v", err)
	}
	for _, f := range []string{"flows.json", "flows_cred.json"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), pw["dashboard"]) || strings.Contains(string(b), adminPassword) {
			t.Errorf("%s holds a password in clear", f)
		}
	}

	// The dashboard's account reads what the bridge writes.
	bridge, err := mqttClient(t, mqttURL, "medpipe", pw["medpipe"])
	if err != nil {
		t.Fatal(err)
	}
	var seen struct {
		Devices []struct {
			ID       string `json:"id"`
			Readings int    `json:"readings"`
		} `json:"devices"`
	}
	deadline = time.Now().Add(90 * time.Second)
	for {
		// The flow counts a reading at its last value topic (MPU).
		mustDo(t, "bridge publishes", bridge.Publish("Pico/sim-00042/Physiological_Data/Temperature", 1, false, "36.6"))
		mustDo(t, "bridge publishes", bridge.Publish("Pico/sim-00042/Internal_Device_Data/Temperature/MPU", 1, false, "23.4"))
		if resp, err := http.Get(base + "/medpipe/devices"); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&seen)
			resp.Body.Close()
		}
		if len(seen.Devices) == 1 && seen.Devices[0].ID == "sim-00042" && seen.Devices[0].Readings > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Node-RED's flows did not receive the bridge's readings as dashboard: %+v", seen.Devices)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
