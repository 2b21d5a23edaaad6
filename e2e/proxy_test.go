package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/ingest"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// The shipped config's addresses: the frontend's bind and the backend's
// server lines. Only they are rewritten for the test.
var (
	haproxyBind   = regexp.MustCompile(`(?m)^(\s*bind\s+)\S*:9998\b`)
	haproxyServer = regexp.MustCompile(`(?m)^(\s*server\s+\S+\s+)\S+:9998\b`)
)

// shippedHAProxyConfig is deploy/haproxy.cfg with the devices' port on
// listen and every ingest server at edge: addresses changed, nothing else.
func shippedHAProxyConfig(t *testing.T, listen, edge string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	if len(haproxyBind.FindAllString(cfg, -1)) != 1 || len(haproxyServer.FindAllString(cfg, -1)) == 0 {
		t.Fatalf("deploy/haproxy.cfg: no bind on :9998 or no ingest server line to point at the test's edge:\n%s", cfg)
	}
	cfg = haproxyBind.ReplaceAllString(cfg, "${1}"+listen)
	return haproxyServer.ReplaceAllString(cfg, "${1}"+edge)
}

// TestThroughShippedHAProxy: a device connecting through the shipped
// haproxy config (send-proxy-v2) shows its own address, not haproxy's, on
// Pico/<id>/Ip_address and Port_address; the edge trusts the header because
// haproxy connects from the --proxy-protocol-from address.
func TestThroughShippedHAProxy(t *testing.T) {
	bin := testkit.HAProxyBinary(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dev := makeDevices(1, wire.Pico, "proxied")[0]
	from, err := ingest.ParseProxyFrom("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	mqtt := func(e *bus.Embedded) string { return e.MQTTURL() }
	p := startPipelineEdge(t, mqtt, func(_ jetstream.JetStream, o *decrypt.Options) { o.Keys = []wire.Device{dev.dev} },
		func(o *ingest.Options) { o.ProxyFrom = from })

	listen := "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t))
	cfgPath := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(shippedHAProxyConfig(t, listen, p.edge.Addr().String())), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, bin, "-c", "-n", "4096", "-f", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c refuses the shipped config: %v\n%s", err, out)
	}
	// -n caps the connections below the shipped maxconn, which needs more
	// file descriptors than this machine's hard limit grants.
	testkit.StartProcess(t, "haproxy", nil, bin, "-db", "-n", "4096", "-f", cfgPath)

	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: p.server.MQTTURL(), Filter: "Pico/" + dev.dev.ID + "/#", QoS: 1, ClientID: "proxy-e2e", CleanSession: true})
	// The device: another loopback address than haproxy's and the edge's.
	const deviceIP = "127.0.0.23"
	var conn net.Conn
	testkit.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(deviceIP)}, Timeout: time.Second}
		conn, err = d.DialContext(ctx, "tcp", listen)
		if err != nil {
			return fmt.Errorf("haproxy not accepting on %s: %w", listen, err)
		}
		return nil
	})
	devicePort := strconv.Itoa(conn.LocalAddr().(*net.TCPAddr).Port)
	sendFramesOn(t, conn, dev, 3, 100*time.Millisecond, nil)

	want := map[string]string{"Ip_address": deviceIP, "Port_address": devicePort}
	got := map[string]string{}
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, m := range col.Messages() {
			for suffix := range want {
				if m.Topic == "Pico/"+dev.dev.ID+"/"+suffix {
					got[suffix] = m.Payload
				}
			}
		}
		if len(got) < len(want) {
			return fmt.Errorf("address topics so far: %v", got)
		}
		return nil
	})
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("Pico/%s/%s = %q, want %q (the device's, not haproxy's)", dev.dev.ID, k, got[k], v)
		}
	}
}
