package e2e

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/testkit"
)

// TestUpSecuredByDefault attacks `medpipe up` as it starts with no
// security flag: anonymous and wrong-password NATS and MQTT clients are
// refused, a dashboard logs in but cannot write the device topics, and the
// operator's commands find the admin login up generated in its data dir.
func TestUpSecuredByDefault(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	port := func() string { _, p, _ := net.SplitHostPort(testkit.FreeAddr(t)); return p }
	natsPort, mqttPort := port(), port()
	dataDir := t.TempDir()
	upCtx, stop := context.WithCancel(ctx)
	var logs testkit.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(upCtx, []string{"up", "--simulate", "3", "--rate", "5", "--data-dir", dataDir,
			"--nats-port", natsPort, "--mqtt-port", mqttPort, "--monitor-port", "-2", "--listen", testkit.FreeAddr(t), "--http", "", "--status-every", "0"}, &logs, &logs)
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("up: %v", err)
		}
	}()
	natsURL, mqttURL := "nats://127.0.0.1:"+natsPort, "tcp://127.0.0.1:"+mqttPort
	waitListening(t, "127.0.0.1:"+mqttPort, done, &logs)

	// Files: the directory 0700, every secret 0600.
	credDir := filepath.Join(dataDir, bus.CredentialsDir)
	if st, err := os.Stat(credDir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("credentials dir: %v %v", st.Mode(), err)
	}
	files, err := filepath.Glob(filepath.Join(credDir, "*"))
	if err != nil || len(files) != len(bus.Roles) {
		t.Fatalf("credentials: %v %v", files, err)
	}
	for _, f := range append(files, filepath.Join(dataDir, bus.JetStreamKeyFile)) {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st.Mode(), err)
		}
	}

	// NATS: nobody without the right password, and no dashboard at all.
	user, pw := dashboardLogin(t, dataDir)
	for _, o := range [][]nats.Option{nil, {nats.UserInfo("admin", "guess")}, {nats.UserInfo(user, pw)}} {
		if nc, err := nats.Connect(natsURL, o...); err == nil {
			nc.Close()
			t.Fatalf("NATS client with %d options connected", len(o))
		}
	}

	// MQTT: anonymous refused; a dashboard reads and cannot write.
	mqttConnect := func(user, pw string) (mqtt.Client, error) {
		o := mqtt.NewClientOptions().AddBroker(mqttURL).SetClientID("attack-" + user).SetAutoReconnect(false).SetUsername(user).SetPassword(pw)
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(20 * time.Second) {
			t.Fatal("MQTT connect: no answer in 20s")
		}
		return c, tok.Error()
	}
	if c, err := mqttConnect("", ""); err == nil {
		c.Disconnect(0)
		t.Fatal("anonymous MQTT client connected")
	}
	dash, err := mqttConnect(user, pw)
	if err != nil {
		t.Fatalf("dashboard login: %v", err)
	}
	defer dash.Disconnect(0)
	const topic = "Pico/sim-00001/Physiological_Data/Temperature"
	got := make(chan string, 256)
	if tok := dash.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("dashboard subscribe: %v", tok.Error())
	}
	if tok := dash.Publish(topic, 1, true, "41.917"); !tok.WaitTimeout(20 * time.Second) {
		t.Fatal("dashboard publish: no answer")
	}
	// The fake was decided on before these real readings were published; at
	// 5 readings/s, the next 10 real ones come within seconds.
	for range 10 {
		select {
		case v := <-got:
			if v == "41.917" {
				t.Fatal("a dashboard's fake reading reached the dashboards")
			}
		case <-ctx.Done():
			t.Fatal("no readings reached the dashboard")
		}
	}

	// The operator's commands use up's admin login from the data dir.
	keys := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := run(ctx, append([]string{"keys", "--nats", natsURL}, args...), &out, &errOut)
		return out.String() + errOut.String(), err
	}
	if out, err := keys("--nats-credentials-dir", t.TempDir(), "list"); err == nil {
		t.Fatalf("keys without credentials worked:\n%s", out)
	}
	if out, err := keys("--nats-credentials-dir", credDir, "add", "dev-x"); err != nil {
		t.Fatalf("keys add as admin: %v\n%s", err, out)
	}
	out, err := keys("--nats-credentials-dir", credDir, "audit")
	if err != nil || !strings.Contains(strings.Join(strings.Fields(out), " "), "admin add dev-x sha256:") {
		t.Fatalf("audit: %v\n%s", err, out)
	}
}
