package e2e

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// TestSecuredPipelineLeaksNoSecret runs ingest (a plain and a TLS device
// port), decrypt and publish as processes against a nats-server that takes
// only TLS with a password and a Mosquitto that takes only TLS with a
// password, all with debug logging. Devices send over both ports and every
// reading must arrive. Then no device key or IV, in any encoding, and no
// password, right or wrong, may appear in any process's output (logs and
// errors), /metrics or /healthz. Failed logins are part of the run: a
// publish with a wrong MQTT password and a decrypt with a wrong NATS
// password in its URL.
func TestSecuredPipelineLeaksNoSecret(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	tf := testkit.NewTLSFiles(t)
	secrets := map[string]string{
		"nats password":        "nats-Pw-7f3a9c21",
		"mqtt password":        "mqtt-Pw-5b8e0d44",
		"watcher password":     "watch-Pw-c1d2e3f4",
		"wrong mqtt password":  "wrong-Mqtt-9a8b7c6d",
		"wrong nats password":  "wrong-Nats-1a2b3c4d",
		"nats password (file)": "",
	}
	nats := testkit.StartSecureNATS(t, tf, "medpipe", secrets["nats password"])
	mq := testkit.StartMosquitto(t, testkit.MosquittoOptions{TLS: tf, Users: map[string]string{
		"medpipe": secrets["mqtt password"], "watcher": secrets["watcher password"],
	}})
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "nats-password")
	if err := os.WriteFile(pwFile, []byte(secrets["nats password"]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	delete(secrets, "nats password (file)")

	devs := append(makeDevices(2, wire.Pico, "plain"), makeDevices(2, wire.Pseudo, "tls")...)
	var keys []byte
	for _, d := range devs {
		keys = wire.AppendKeyLine(keys, d.dev)
		for what, b := range map[string][16]byte{"key": d.dev.Key, "iv": d.dev.IV} {
			name := d.dev.ID + " " + what
			secrets[name] = string(b[:])
			secrets[name+" (hex)"] = hex.EncodeToString(b[:])
			secrets[name+" (base64)"] = base64.StdEncoding.EncodeToString(b[:])
		}
	}
	keysFile := filepath.Join(dir, "keys.jsonl")
	if err := os.WriteFile(keysFile, keys, 0o600); err != nil {
		t.Fatal(err)
	}

	env := []string{
		"MEDPIPE_NATS=" + nats.URL(), "MEDPIPE_NATS_USER=medpipe", "MEDPIPE_NATS_PASSWORD_FILE=" + pwFile,
		"MEDPIPE_NATS_CA=" + tf.CA, "MEDPIPE_LOG_LEVEL=debug", "MEDPIPE_PARTITIONS=4",
	}
	plainAddr, tlsAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	var https []string
	start := func(name string, extraEnv []string, args ...string) *testkit.Proc {
		p, h := startServing(ctx, t, name, append(append([]string{}, env...), extraEnv...), args...)
		https = append(https, h)
		return p
	}
	procs := []*testkit.Proc{
		start("ingest", nil, "ingest", "--listen", plainAddr, "--tls-listen", tlsAddr, "--tls-cert", tf.Cert, "--tls-key", tf.Key),
		start("decrypt", nil, "decrypt", "--keys", keysFile),
		start("publish", []string{"MEDPIPE_MQTT_PASSWORD=" + secrets["mqtt password"]}, "publish", "--mqtt", mq.URL(), "--mqtt-ca", tf.CA, "--mqtt-user", "medpipe"),
	}
	// Failed logins: their errors must name the problem, not the password.
	badMQTT := testkit.StartMedpipe(t, "publish-wrong-password", append(append([]string{}, env...), "MEDPIPE_MQTT_PASSWORD="+secrets["wrong mqtt password"]),
		"publish", "--mqtt", mq.URL(), "--mqtt-ca", tf.CA, "--mqtt-user", "medpipe", "--http", "", "--mqtt-client-id", "wrong")
	badNATS := testkit.StartMedpipe(t, "decrypt-wrong-password", append(append([]string{}, env...), "MEDPIPE_NATS=tls://medpipe:"+secrets["wrong nats password"]+"@"+strings.TrimPrefix(nats.URL(), "tls://"), "MEDPIPE_NATS_USER="),
		"decrypt", "--keys", keysFile, "--http", "")

	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: mq.URL(), Filter: "Pico/#", QoS: 1, ClientID: "security-test", CleanSession: true,
		Username: "watcher", Password: secrets["watcher password"], TLS: tf.ClientConfig(t)})
	const n = 50
	var wg sync.WaitGroup
	for i, d := range devs {
		wg.Go(func() {
			if i < 2 {
				sendFrames(t, plainAddr, d, n, 5*time.Millisecond, nil)
				return
			}
			c, err := tls.Dial("tcp", tlsAddr, tf.ClientConfig(t))
			if err != nil {
				t.Errorf("TLS device port: %v", err)
				return
			}
			sendFramesOn(t, c, d, n, 5*time.Millisecond, nil)
		})
	}
	wg.Wait()
	if err := col.WaitLen(ctx, len(devs)*(n*7+len(addressTopics))); err != nil {
		t.Fatal(err)
	}
	checkDelivery(t, col.Messages(), "Pico", devs, n)

	// Collect everything the processes showed the world, after a look at
	// each endpoint, then stop them (their drain logs count too).
	var shown strings.Builder
	for _, h := range https {
		for _, path := range []string{"/metrics", "/healthz"} {
			resp, err := http.Get("http://" + h + path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			shown.WriteString(h + path + ":\n" + string(b) + "\n")
		}
	}
	for _, p := range procs {
		p.Stop(t, 20*time.Second)
	}
	for _, p := range []*testkit.Proc{badMQTT, badNATS} {
		_ = p.Cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.Exited():
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not stop", p.Name)
		}
	}
	for _, p := range append(procs, badMQTT, badNATS) {
		shown.WriteString(p.Name + ":\n" + p.Out.String() + "\n")
	}
	all := shown.String()
	for name, s := range secrets {
		if i := strings.Index(all, s); i >= 0 {
			t.Errorf("%s shown: …%s…", name, all[max(0, i-200):min(len(all), i+len(s)+50)])
		}
	}
	// The failed logins were seen and reported, so the run did exercise them.
	if !strings.Contains(badMQTT.Out.String(), "mqtt connect failed") || !strings.Contains(strings.ToLower(badNATS.Out.String()), "authorization") {
		t.Errorf("failed logins not reported:\n%s\n%s", badMQTT.Out.String(), badNATS.Out.String())
	}
	t.Logf("checked %d secrets against %d bytes of output; wrong-password runs said:\n%s\n%s", len(secrets), len(all), badMQTT.Out.String(), lastLines(badNATS.Out.String(), 2))
	// Debug logging was on: the run's logs are not trivially empty.
	if !strings.Contains(all, "level=DEBUG") {
		t.Error("no debug line in the output: was debug logging on?")
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
