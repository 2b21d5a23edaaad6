package bus_test

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/testkit"
)

var update = flag.Bool("update", false, "rewrite deploy/nats/auth.conf from bus.RolePermissions")

// shippedDir is where the nats-server configuration medpipe ships lives.
const shippedDir = "../deploy/nats"

// TestShippedAuthConfig keeps deploy/nats/auth.conf equal to the
// permissions medpipe up's embedded server uses.
func TestShippedAuthConfig(t *testing.T) {
	want, err := bus.AuthConfig(bus.DefaultTopicPrefix)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(shippedDir, "auth.conf")
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s differs from bus.AuthConfig: run go test ./bus -run TestShippedAuthConfig -update", path)
	}
}

func randomSecret(t *testing.T) string {
	s, err := bus.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// shipped is a nats-server started from deploy/nats/nats-server.conf, on
// loopback with random ports and a temporary store.
type shipped struct {
	srv      *server.Server
	creds    bus.Credentials
	storeDir string
	mqttPort int
}

func startShipped(t *testing.T) *shipped {
	t.Helper()
	sh := &shipped{creds: bus.Credentials{}, storeDir: t.TempDir()}
	for _, r := range bus.Roles {
		sh.creds[r] = randomSecret(t)
		t.Setenv(bus.RolePasswordEnv(r), sh.creds[r])
	}
	t.Setenv(bus.JetStreamKeyEnv, randomSecret(t))
	opts, err := server.ProcessConfigFile(filepath.Join(shippedDir, "nats-server.conf"))
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	sh.mqttPort = testkit.FreePort(t)
	opts.MQTT.Host, opts.MQTT.Port = "127.0.0.1", sh.mqttPort
	opts.StoreDir, opts.NoSigs, opts.NoLog = sh.storeDir, true, os.Getenv("NATSLOG") == ""
	if opts.JetStreamCipher != server.AES || opts.JetStreamKey == "" {
		t.Fatalf("shipped config: JetStream cipher %v, key set %v: want aes with a key", opts.JetStreamCipher, opts.JetStreamKey != "")
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	if !opts.NoLog {
		s.ConfigureLogger()
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("shipped nats-server did not start")
	}
	sh.srv = s
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return sh
}

// conn is a connection as one role, with the permission violations the
// server reports on it.
type conn struct {
	nc         *nats.Conn
	js         jetstream.JetStream
	violations chan string
}

func (sh *shipped) connect(t *testing.T, r bus.Role) *conn {
	t.Helper()
	c := &conn{violations: make(chan string, 64)}
	opts := append(bus.UserOptions(string(r), sh.creds[r]), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			select {
			case c.violations <- err.Error():
			default:
			}
		}
	}))
	nc, js, err := bus.Connect(t.Context(), bus.ConnectOptions{URLs: sh.srv.ClientURL(), Name: string(r), Options: opts})
	if err != nil {
		t.Fatalf("connect as %s: %v", r, err)
	}
	t.Cleanup(nc.Close)
	c.nc, c.js = nc, js
	return c
}

// refused runs do (in the background: a refused request gets no answer)
// and waits for the server to report a permission violation naming subject.
func (c *conn) refused(t *testing.T, subject string, do func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- do(ctx) }()
	var after <-chan time.Time
	for {
		select {
		case v := <-c.violations:
			if strings.Contains(v, `"`+subject+`"`) {
				return
			}
		case <-done:
			// The server's -ERR comes before the answer that ended do, but
			// reaches the error handler asynchronously: give it a moment.
			done = nil
			grace := time.NewTimer(5 * time.Second)
			defer grace.Stop()
			after = grace.C
		case <-after:
			t.Fatalf("allowed, want refused: %s", subject)
		case <-ctx.Done():
			t.Fatalf("no permission violation for %s within 30s", subject)
		}
	}
}

func allowed(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// TestRolesOnShippedConfig runs every role against the shipped
// configuration: each may do its work and is refused the rest.
func TestRolesOnShippedConfig(t *testing.T) {
	sh := startShipped(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	url := sh.srv.ClientURL()

	// Nobody gets in without a user, or with a wrong password.
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("anonymous client connected")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		t.Fatalf("anonymous: %v", err)
	}
	if nc, err := nats.Connect(url, nats.UserInfo("admin", "wrong")); err == nil {
		nc.Close()
		t.Fatal("wrong password accepted")
	}

	// The admin creates everything; the stages only bind to it.
	admin := sh.connect(t, bus.RoleAdmin)
	parts, err := bus.ApplyStreams(ctx, admin.js, bus.StreamOptions{Partitions: 2})
	allowed(t, "admin applies streams", err)
	reg, err := registry.Open(ctx, admin.js, 1)
	allowed(t, "admin opens the registry", err)
	dev, err := reg.Add(ctx, "dev-1")
	allowed(t, "admin adds a device", err)

	ingest := sh.connect(t, bus.RoleIngest)
	decrypt := sh.connect(t, bus.RoleDecrypt)
	publish := sh.connect(t, bus.RolePublish)
	replayer := sh.connect(t, bus.RoleReplay)
	if nc, err := nats.Connect(url, bus.UserOptions(string(bus.RoleDashboard), sh.creds[bus.RoleDashboard])...); err == nil {
		nc.Close()
		t.Fatal("a dashboard connected over NATS: it is an MQTT reader only")
	}

	// Allowed: each stage's own work, end to end through the streams.
	for _, c := range []*conn{ingest, decrypt, publish, replayer} {
		_, err := bus.VerifyStreams(ctx, c.js, bus.StreamOptions{}, nil)
		allowed(t, "verify streams", err)
	}
	_, err = ingest.nc.SubscribeSync(bus.SubjectDeadLetterPrefix + ">")
	allowed(t, "ingest watches dead letters", err)
	_, err = ingest.js.Publish(ctx, bus.RawSubject(0), []byte("frame"))
	allowed(t, "ingest stores a frame in RAW", err)

	acks, err := ingest.nc.SubscribeSync("medpipe.ack.edge-1")
	allowed(t, "ingest listens for v2 replies", err)
	// The subscription must reach the server before decrypt publishes, or
	// the reply has no interest and is dropped.
	allowed(t, "ingest's subscription reaches the server", ingest.nc.Flush())
	allowed(t, "decrypt sends a v2 reply", decrypt.nc.Publish("medpipe.ack.edge-1", []byte("ack")))
	_, err = acks.NextMsg(10 * time.Second)
	allowed(t, "the edge receives decrypt's reply", err)

	rawMsg := fetchOne(ctx, t, decrypt.js, bus.StreamRaw, bus.StageDecrypt+"-0")
	allowed(t, "decrypt acks", rawMsg.DoubleAck(ctx))
	ro, err := registry.Bind(ctx, decrypt.js, 1)
	allowed(t, "decrypt binds the registry", err)
	got, _, err := ro.Get(ctx, "dev-1")
	allowed(t, "decrypt reads a device", err)
	if got.Key != dev.Key {
		t.Fatal("decrypt read another key")
	}
	ready := make(chan struct{})
	wctx, stopWatch := context.WithCancel(ctx)
	go func() { _ = ro.Watch(wctx, func(registry.Record, bool) {}, func() { close(ready) }) }()
	select {
	case <-ready:
	case <-ctx.Done():
		t.Fatal("decrypt could not watch the registry")
	}
	stopWatch()
	for _, open := range []func(context.Context, jetstream.JetStream, int) (jetstream.KeyValue, error){bus.OpenConnStore, bus.OpenSeqStore} {
		kv, err := open(ctx, decrypt.js, 1)
		allowed(t, "decrypt binds its bucket", err)
		_, err = kv.Put(ctx, "k", []byte("v"))
		allowed(t, "decrypt writes its bucket", err)
		_, err = kv.Get(ctx, "k")
		allowed(t, "decrypt reads its bucket", err)
	}
	_, err = decrypt.js.Publish(ctx, bus.ReadingsSubject(0, "dev-1"), []byte("{}"))
	allowed(t, "decrypt publishes a reading", err)
	_, err = decrypt.js.Publish(ctx, bus.DeadLetterSubject(bus.ReasonMalformed), []byte("x"))
	allowed(t, "decrypt dead-letters a frame", err)

	readingMsg := fetchOne(ctx, t, publish.js, bus.StreamReadings, bus.StagePublish+"-0")
	allowed(t, "publish acks", readingMsg.DoubleAck(ctx))

	oc, err := replayer.js.OrderedConsumer(ctx, bus.StreamRaw, jetstream.OrderedConsumerConfig{})
	allowed(t, "replay opens an ordered consumer on RAW", err)
	if m, err := oc.Next(jetstream.FetchMaxWait(10 * time.Second)); err != nil || string(m.Data()) != "frame" {
		t.Fatalf("replay reads RAW: %v", err)
	}

	// Refused: everything else.
	cases := []struct {
		name    string
		c       *conn
		subject string
		do      func(ctx context.Context, c *conn) error
	}{
		{"decrypt cannot publish RAW", decrypt, bus.RawSubject(0), corePublish(bus.RawSubject(0))},
		{"publish cannot publish READINGS", publish, bus.ReadingsSubject(0, "x"), corePublish(bus.ReadingsSubject(0, "x"))},
		{"ingest cannot read READINGS", ingest, "$JS.API.CONSUMER.INFO." + bus.StreamReadings + ".publish-0", bindConsumer(bus.StreamReadings, "publish-0")},
		{"ingest cannot subscribe to READINGS", ingest, bus.SubjectReadingsPrefix + ">", coreSubscribe(bus.SubjectReadingsPrefix + ">")},
		{"ingest cannot read RAW", ingest, "$JS.API.CONSUMER.INFO." + bus.StreamRaw + ".decrypt-0", bindConsumer(bus.StreamRaw, "decrypt-0")},
		{"ingest cannot listen on decrypt's inboxes", ingest, bus.InboxPrefix(bus.RoleDecrypt) + ".>", coreSubscribe(bus.InboxPrefix(bus.RoleDecrypt) + ".>")},
		{"publish cannot read the registry", publish, "$JS.API.STREAM.INFO.KV_" + bus.DevicesBucket, openBucket(bus.DevicesBucket)},
		{"ingest cannot read the registry", ingest, "$JS.API.STREAM.INFO.KV_" + bus.DevicesBucket, openBucket(bus.DevicesBucket)},
		{"replay cannot read the registry", replayer, "$JS.API.STREAM.INFO.KV_" + bus.DevicesBucket, openBucket(bus.DevicesBucket)},
		{"decrypt cannot write the registry", decrypt, "$KV." + bus.DevicesBucket + ".dev-1", corePublish("$KV." + bus.DevicesBucket + ".dev-1")},
		{"decrypt cannot change a stream's limits", decrypt, "$JS.API.STREAM.UPDATE." + bus.StreamRaw, updateStream(bus.StreamRaw)},
		{"ingest cannot delete a stream", ingest, "$JS.API.STREAM.DELETE." + bus.StreamRaw, deleteStream(bus.StreamRaw)},
		{"publish cannot write replay marks", publish, "$KV." + bus.SeqBucket + ".dev-1", corePublish("$KV." + bus.SeqBucket + ".dev-1")},
		{"ingest cannot write replay marks", ingest, "$KV." + bus.SeqBucket + ".dev-1", corePublish("$KV." + bus.SeqBucket + ".dev-1")},
		{"decrypt cannot write the audit", decrypt, bus.SubjectAuditPrefix + "add", corePublish(bus.SubjectAuditPrefix + "add")},
		{"decrypt cannot publish device topics", decrypt, "Pico.dev-1.Physiological_Data.Temperature", corePublish("Pico.dev-1.Physiological_Data.Temperature")},
		{"replay cannot publish live device topics", replayer, "Pico.dev-1.Physiological_Data.Temperature", corePublish("Pico.dev-1.Physiological_Data.Temperature")},
		{"publish cannot forge a v2 reply", publish, "medpipe.ack.edge-1", corePublish("medpipe.ack.edge-1")},
		{"ingest cannot forge a v2 reply", ingest, "medpipe.ack.edge-1", corePublish("medpipe.ack.edge-1")},
		{"publish cannot read RAW", publish, "$JS.API.CONSUMER.MSG.NEXT." + bus.StreamRaw + ".decrypt-0", pull(bus.StreamRaw, "decrypt-0")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.refused(t, tc.subject, func(ctx context.Context) error { return tc.do(ctx, tc.c) })
		})
	}
	if parts != 2 {
		t.Fatalf("partitions %d", parts)
	}
}

func fetchOne(ctx context.Context, t *testing.T, js jetstream.JetStream, stream, consumer string) jetstream.Msg {
	t.Helper()
	c, err := js.Consumer(ctx, stream, consumer)
	allowed(t, "bind "+consumer, err)
	b, err := c.Fetch(1, jetstream.FetchMaxWait(10*time.Second), jetstream.FetchPriorityGroup(bus.PriorityGroup))
	allowed(t, "pull from "+consumer, err)
	for m := range b.Messages() {
		return m
	}
	t.Fatalf("pull from %s: nothing (%v)", consumer, b.Error())
	return nil
}

func corePublish(subject string) func(context.Context, *conn) error {
	return func(ctx context.Context, c *conn) error {
		if err := c.nc.Publish(subject, []byte("x")); err != nil {
			return err
		}
		return c.nc.FlushWithContext(ctx)
	}
}

func coreSubscribe(subject string) func(context.Context, *conn) error {
	return func(ctx context.Context, c *conn) error {
		if _, err := c.nc.SubscribeSync(subject); err != nil {
			return err
		}
		return c.nc.FlushWithContext(ctx)
	}
}

func bindConsumer(stream, name string) func(context.Context, *conn) error {
	return func(ctx context.Context, c *conn) error { _, err := c.js.Consumer(ctx, stream, name); return err }
}

func openBucket(bucket string) func(context.Context, *conn) error {
	return func(ctx context.Context, c *conn) error { _, err := c.js.KeyValue(ctx, bucket); return err }
}

func pull(stream, consumer string) func(context.Context, *conn) error {
	return func(ctx context.Context, c *conn) error {
		_, err := c.nc.RequestWithContext(ctx, "$JS.API.CONSUMER.MSG.NEXT."+stream+"."+consumer, []byte(`{"batch":1}`))
		return err
	}
}

func updateStream(stream string) func(context.Context, *conn) error {
	return func(ctx context.Context, c *conn) error {
		_, err := c.js.UpdateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{bus.SubjectRawPrefix + "*"}, MaxAge: time.Minute})
		return err
	}
}

func deleteStream(stream string) func(context.Context, *conn) error {
	return func(ctx context.Context, c *conn) error { return c.js.DeleteStream(ctx, stream) }
}

// mqttClient connects to the shipped server's MQTT listener as user (""
// for anonymous) and returns the client, or the connection error.
func (sh *shipped) mqttClient(t *testing.T, user string) (mqtt.Client, error) {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker("tcp://127.0.0.1:" + strconv.Itoa(sh.mqttPort)).
		SetClientID(t.Name() + "-" + user + "-" + randomSecret(t)[2:8]).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
	if user != "" {
		o.SetUsername(user).SetPassword(sh.creds[bus.Role(user)])
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		t.Fatalf("MQTT connect as %q: no answer in 20s", user)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

func mqttWait(t *testing.T, what string, tok mqtt.Token) {
	t.Helper()
	if !tok.WaitTimeout(20 * time.Second) {
		t.Fatalf("%s: no answer in 20s", what)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// TestMQTTOnShippedConfig: only the publish role writes the device topics;
// dashboards log in and read; anonymous MQTT clients get nothing.
func TestMQTTOnShippedConfig(t *testing.T) {
	sh := startShipped(t)
	if _, err := sh.mqttClient(t, ""); err == nil {
		t.Fatal("anonymous MQTT client connected")
	}
	sh.creds[bus.RoleDashboard] = "wrong"
	if _, err := sh.mqttClient(t, string(bus.RoleDashboard)); err == nil {
		t.Fatal("dashboard with a wrong password connected")
	}
	sh.creds[bus.RoleDashboard] = os.Getenv(bus.RolePasswordEnv(bus.RoleDashboard))

	dash, err := sh.mqttClient(t, string(bus.RoleDashboard))
	allowed(t, "dashboard connects", err)
	bridge, err := sh.mqttClient(t, string(bus.RolePublish))
	allowed(t, "publish connects", err)
	topic := bus.DefaultTopicPrefix + "/sim-00001/Physiological_Data/Temperature"
	got := make(chan string, 16)
	mqttWait(t, "dashboard subscribes", dash.Subscribe(bus.DefaultTopicPrefix+"/#", 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }))

	// The server acknowledges a refused QoS 1 publish and drops it, so by
	// the time the bridge's real value is sent the fake was decided on: a
	// delivered fake would arrive first.
	mqttWait(t, "dashboard publishes", dash.Publish(topic, 1, true, "41.917"))
	mqttWait(t, "bridge publishes", bridge.Publish(topic, 1, false, "36.6"))
	select {
	case v := <-got:
		if v != "36.6" {
			t.Fatalf("dashboard received %q: a dashboard could write the device topics", v)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the bridge's reading did not reach the dashboard in 20s")
	}
	// And no retained fake waits for the next dashboard.
	late, err := sh.mqttClient(t, string(bus.RoleDashboard))
	allowed(t, "second dashboard connects", err)
	retained := make(chan string, 4)
	mqttWait(t, "second dashboard subscribes", late.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) { retained <- string(m.Payload()) }))
	mqttWait(t, "bridge publishes", bridge.Publish(topic, 1, false, "36.7"))
	if v := <-retained; v != "36.7" {
		t.Fatalf("a new dashboard received %q first: a retained fake was stored", v)
	}
}
