package deploy

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/medpipe/medpipe/replay"
	"github.com/medpipe/medpipe/testkit"
)

// mqttUsers are the MQTT users every shipped broker config knows: the
// bridge (medpipe publish), medpipe replay and the dashboards. start.sh of
// Mosquitto and EMQX read one password secret per user.
var mqttUsers = []string{"medpipe", "dashboard", "replay"}

// startShippedMosquitto runs the real Mosquitto through deploy/mosquitto's
// start.sh with the shipped mosquitto.conf and acl. Only what a container
// fixes is changed: the /mosquitto/ paths point into a temp dir, the
// listener is a free loopback port, and the broker runs as the test's user.
func startShippedMosquitto(t *testing.T) (url string, passwords map[string]string) {
	t.Helper()
	bin := testkit.MosquittoBinary(t)
	root := t.TempDir()
	for _, d := range []string{"config", "run", "data", "secrets"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	passwords = map[string]string{}
	for i, u := range mqttUsers {
		passwords[u] = fmt.Sprintf("pw-%s-%d-%d", u, i, time.Now().UnixNano())
		if err := os.WriteFile(filepath.Join(root, "secrets", "mqtt-"+u+"-password"), []byte(passwords[u]+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	acl, err := os.ReadFile(filepath.Join("mosquitto", "acl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "config", "acl"), acl, 0o600); err != nil {
		t.Fatal(err)
	}
	confB, err := os.ReadFile(filepath.Join("mosquitto", "mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	port := testkit.FreePort(t)
	conf := strings.ReplaceAll(string(confB), "/mosquitto/", root+"/")
	if !strings.Contains(conf, "\nlistener 1883\n") {
		t.Fatal("mosquitto.conf: no `listener 1883` line")
	}
	conf = strings.Replace(conf, "\nlistener 1883\n", fmt.Sprintf("\nlistener %d 127.0.0.1\n", port), 1)
	if u, err := user.Current(); err == nil {
		conf = "user " + u.Username + "\n" + conf
	}
	confPath := filepath.Join(root, "config", "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	start, err := filepath.Abs(filepath.Join("mosquitto", "start.sh"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := testkit.StartProcess(t, "mosquitto (start.sh)", []string{
		"MQTT_SECRETS_DIR=" + filepath.Join(root, "secrets"), "MOSQUITTO_RUN_DIR=" + filepath.Join(root, "run"),
		"MOSQUITTO_CONF=" + confPath, "PATH=" + filepath.Dir(bin) + ":" + os.Getenv("PATH"),
	}, "sh", start)
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		select {
		case <-cmd.Exited():
			t.Fatalf("start.sh exited: %v", cmd.Err())
		default:
		}
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			return fmt.Errorf("mosquitto from start.sh not accepting on %d: %w", port, err)
		}
		return c.Close()
	})
	pw, err := os.ReadFile(filepath.Join(root, "run", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	for u, p := range passwords {
		if strings.Contains(string(pw), p) {
			t.Errorf("the password file holds %s's password in clear", u)
		}
	}
	if st, err := os.Stat(filepath.Join(root, "run", "passwd")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("password file mode: %v %v, want 0600", st.Mode(), err)
	}
	return "tcp://127.0.0.1:" + strconv.Itoa(port), passwords
}

// mqttClient connects as user ("" for anonymous); the error is the broker's
// answer to CONNECT.
func mqttClient(t *testing.T, url, user, password string) (mqtt.Client, error) {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("test-%s-%d", user, time.Now().UnixNano())).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).SetCleanSession(true)
	if user != "" {
		o.SetUsername(user).SetPassword(password)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, fmt.Errorf("connect as %q: no answer in 15 s", user)
	}
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// received collects the messages of one subscription.
type received struct {
	mu   sync.Mutex
	msgs []string // topic=payload
}

func (r *received) add(_ mqtt.Client, m mqtt.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m.Topic()+"="+string(m.Payload()))
}

func (r *received) has(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.msgs, s)
}

func (r *received) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !r.has(s) {
		if time.Now().After(deadline) {
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("did not receive %s; got %v", s, r.msgs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustDo(t *testing.T, what string, tok mqtt.Token) {
	t.Helper()
	if !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: %v", what, tok.Error())
	}
}

// TestMosquittoConfigRefusesWriters runs the shipped Mosquitto config the
// way the deployments start it and tries, as an attacker would, what issue
// 16 found open: an anonymous client is refused at CONNECT, a dashboard's
// (or a wrong password's) fake temperature never reaches a subscriber nor
// becomes the retained value, replay cannot write the live topics, and the
// bridge's readings arrive.
func TestMosquittoConfigRefusesWriters(t *testing.T) {
	url, pw := startShippedMosquitto(t)
	const topic = "Pico/sim-00001/Physiological_Data/Temperature"

	if _, err := mqttClient(t, url, "", ""); err == nil {
		t.Fatal("an anonymous client connected")
	} else {
		t.Logf("anonymous CONNECT refused: %v", err)
	}
	if _, err := mqttClient(t, url, "medpipe", "not-the-password"); err == nil {
		t.Fatal("the bridge user connected with a wrong password")
	}

	bridge, err := mqttClient(t, url, "medpipe", pw["medpipe"])
	if err != nil {
		t.Fatalf("bridge: %v", err)
	}
	dash, err := mqttClient(t, url, "dashboard", pw["dashboard"])
	if err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	rep, err := mqttClient(t, url, "replay", pw["replay"])
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	var live received
	mustDo(t, "dashboard subscribes", dash.Subscribe("Pico/#", 1, live.add))
	var replayed received
	mustDo(t, "dashboard subscribes to replay", dash.Subscribe(replay.DefaultPrefix+"/#", 1, replayed.add))

	// Writes that must be dropped; QoS 1 so each is acknowledged (processed)
	// by the broker before the bridge's real value is sent.
	mustDo(t, "dashboard publishes a fake", dash.Publish(topic, 1, true, "41.917"))
	mustDo(t, "replay publishes on the live prefix", rep.Publish(topic, 1, true, "42.5"))
	mustDo(t, "bridge publishes", bridge.Publish(topic, 1, true, "36.6"))
	live.waitFor(t, topic+"=36.6")
	for _, fake := range []string{"41.917", "42.5"} {
		if live.has(topic + "=" + fake) {
			t.Errorf("a subscriber received the fake %s", fake)
		}
	}

	// A new dashboard is served the bridge's retained value, not a fake.
	mustDo(t, "dashboard retains a fake", dash.Publish(topic, 1, true, "41.917"))
	dash2, err := mqttClient(t, url, "dashboard", pw["dashboard"])
	if err != nil {
		t.Fatal(err)
	}
	var retained received
	mustDo(t, "new dashboard subscribes", dash2.Subscribe(topic, 1, retained.add))
	retained.waitFor(t, topic+"=36.6")
	if retained.has(topic + "=41.917") {
		t.Error("the retained fake was served to a new dashboard")
	}

	// Replay writes its own prefix.
	rtopic := replay.DefaultPrefix + "/sim-00001/Physiological_Data/Temperature"
	mustDo(t, "replay publishes", rep.Publish(rtopic, 1, false, "36.8"))
	replayed.waitFor(t, rtopic+"=36.8")
}

// aclRule is one grant: user may do action (write or read) on topic.
type aclRule struct{ user, action, topic string }

// TestBrokerACLsAgree: the Mosquitto and EMQX configs grant exactly the
// same rights, the live prefix is medpipe publish's --prefix default and the
// replay prefix is replay.DefaultPrefix, and EMQX refuses what no rule
// grants.
func TestBrokerACLsAgree(t *testing.T) {
	var mosq []aclRule
	f, err := os.Open(filepath.Join("mosquitto", "acl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var cur string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) == 0 || strings.HasPrefix(fields[0], "#"):
		case fields[0] == "user" && len(fields) == 2:
			cur = fields[1]
		case fields[0] == "topic" && len(fields) == 3 && cur != "":
			mosq = append(mosq, aclRule{cur, fields[1], fields[2]})
		default:
			t.Errorf("mosquitto/acl: unexpected line %q", sc.Text())
		}
	}
	b, err := os.ReadFile(filepath.Join("emqx", "acl.conf"))
	if err != nil {
		t.Fatal(err)
	}
	rule := regexp.MustCompile(`^\{allow, \{username, "([^"]+)"\}, (publish|subscribe), \["([^"]+)"\]\}\.$`)
	var emqx []aclRule
	denyAll := false
	for line := range strings.SplitSeq(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "%"):
		case line == "{deny, all}.":
			denyAll = true
		default:
			m := rule.FindStringSubmatch(line)
			if m == nil {
				t.Errorf("emqx/acl.conf: unexpected rule %q", line)
				continue
			}
			action := map[string]string{"publish": "write", "subscribe": "read"}[m[2]]
			emqx = append(emqx, aclRule{m[1], action, m[3]})
		}
	}
	if !denyAll {
		t.Error("emqx/acl.conf does not end in {deny, all}.")
	}
	key := func(r aclRule) string { return r.user + " " + r.action + " " + r.topic }
	var a, e []string
	for _, r := range mosq {
		a = append(a, key(r))
	}
	for _, r := range emqx {
		e = append(e, key(r))
	}
	slices.Sort(a)
	slices.Sort(e)
	if !slices.Equal(a, e) {
		t.Errorf("the brokers' ACLs differ:\nmosquitto %v\nemqx      %v", a, e)
	}
	// The live prefix is publish's default --prefix.
	out, _ := exec.Command(testkit.MedpipeBinary(t), "publish", "-h").CombinedOutput()
	pm := regexp.MustCompile(`(?m)--prefix string\n\s+.*\(default (\S+)\)`).FindSubmatch(out)
	if pm == nil {
		t.Fatalf("medpipe publish -h shows no --prefix default:\n%s", out)
	}
	want := map[string]bool{
		"medpipe write " + string(pm[1]) + "/#":         true,
		"replay write " + replay.DefaultPrefix + "/#":   true,
		"dashboard read " + string(pm[1]) + "/#":        true,
		"dashboard read " + replay.DefaultPrefix + "/#": true,
	}
	for _, r := range a {
		if !want[r] {
			t.Errorf("unexpected grant %q", r)
		}
		delete(want, r)
	}
	for r := range want {
		t.Errorf("missing grant %q", r)
	}
	conf, err := os.ReadFile(filepath.Join("emqx", "emqx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"no_match = deny", "mechanism = password_based", "bootstrap_type = plain", "type = file"} {
		if !strings.Contains(string(conf), must) {
			t.Errorf("emqx/emqx.conf lacks %q", must)
		}
	}
	for _, u := range mqttUsers {
		if !strings.Contains(string(b), `"`+u+`"`) {
			t.Errorf("emqx/acl.conf grants nothing to %s", u)
		}
	}
}
