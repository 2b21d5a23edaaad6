package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/firmware/device"
	"github.com/medpipe/medpipe/firmware/device/page"
	"github.com/medpipe/medpipe/firmware/esp/espfake"
	"github.com/medpipe/medpipe/firmware/hwfake"
	"github.com/medpipe/medpipe/firmware/sensors"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/testkit/browser"
	"github.com/medpipe/medpipe/wire"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testkit.RemoveBuilt()
	os.Exit(code)
}

// pipeline is a real `medpipe up` on loopback knowing one device's keys,
// with a collector on its JSON topic.
type pipeline struct {
	edge string
	col  *testkit.Collector
	// login makes more collectors as a dashboard: URL, user and password.
	mqttURL, user, password string
	natsURL, dataDir        string // for medpipe keys against this up
}

func startPipeline(t *testing.T, dev wire.Device) *pipeline {
	t.Helper()
	keys := filepath.Join(t.TempDir(), "keys.jsonl")
	if err := os.WriteFile(keys, wire.AppendKeyLine(nil, dev), 0o600); err != nil {
		t.Fatal(err)
	}
	port := func() string { return strconv.Itoa(testkit.FreePort(t)) }
	mqttPort, natsPort, edge := port(), port(), "127.0.0.1:"+port()
	dataDir := t.TempDir()
	testkit.StartProcess(t, "medpipe up", nil, testkit.MedpipeBinary(t), "up", "--keys", keys, "--data-dir", dataDir,
		"--json-topic", "--nats-port", natsPort, "--mqtt-port", mqttPort, "--monitor-port", "-2", "--listen", edge,
		"--http", "", "--status-every", "0")
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.Dial("tcp", edge); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("medpipe up did not open the device port within 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Dashboards log in with the password up generated in its data dir.
	pw, err := bus.ReadCredential(filepath.Join(dataDir, bus.CredentialsDir), bus.RoleDashboard)
	if err != nil {
		t.Fatal(err)
	}
	col := testkit.NewCollector(t, testkit.CollectorOptions{URL: "tcp://127.0.0.1:" + mqttPort, Filter: "Pico/+/reading", QoS: 1, ClientID: "firmware-e2e", CleanSession: true,
		Username: string(bus.RoleDashboard), Password: pw})
	return &pipeline{edge: edge, col: col, mqttURL: "tcp://127.0.0.1:" + mqttPort, user: string(bus.RoleDashboard), password: pw,
		natsURL: "nats://127.0.0.1:" + natsPort, dataDir: dataDir}
}

// jsonReading is the payload of Pico/<id>/reading.
type jsonReading struct {
	Device     string
	Seq        uint64
	Values     map[string]string
	Received   time.Time
	DeviceTime time.Time `json:"device_time"`
}

// waitReadings waits for n readings of the device on MQTT.
func (p *pipeline) waitReadings(ctx context.Context, t *testing.T, id string, n int) []jsonReading {
	t.Helper()
	for {
		var out []jsonReading
		for _, m := range p.col.Messages() {
			var r jsonReading
			if err := json.Unmarshal([]byte(m.Payload), &r); err != nil {
				t.Fatalf("%s: %v", m.Topic, err)
			}
			if r.Device == id {
				out = append(out, r)
			}
		}
		if len(out) >= n {
			return out
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d readings of %s reached MQTT", len(out), n, id)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// fakeBoard is the Pico's hardware, faked, with known sensor values.
type fakeBoard struct {
	*device.Board
	mod    *espfake.Module
	flash  *hwfake.Flash
	sw     *hwfake.Pin
	led    *hwfake.LED
	motion *hwfake.MPU6050
	temp   *hwfake.DS18B20
}

func newBoard(t *testing.T, edge string) *fakeBoard {
	t.Helper()
	host, port, _ := net.SplitHostPort(edge)
	mod, uart := espfake.New(espfake.Options{
		Networks: map[string]string{"ward-7": "wpa2-passphrase"},
		// The device knows the server by name; the fake's network resolves it to the test's edge.
		Resolve: func(h string, p int) string {
			if h == "medpipe.ward7.example" {
				return net.JoinHostPort(host, port)
			}
			return net.JoinHostPort(h, strconv.Itoa(p))
		},
	})
	t.Cleanup(func() { mod.Close() })
	pulse, chip := &hwfake.ADC{}, &hwfake.ADC{}
	pulse.SetVolts(1.735)
	chip.SetVolts(0.706 - (23.7-27)*0.001721) // 23.7 °C on the RP2040's diode
	motion := &hwfake.MPU6050{}
	motion.Set(0.01, -0.02, 0.98, 24.5)
	fb := &fakeBoard{mod: mod, flash: hwfake.NewFlash(device.StorageSize), sw: &hwfake.Pin{}, led: &hwfake.LED{}, motion: motion, temp: hwfake.NewDS18B20(36.625)}
	fb.Board = &device.Board{
		UART: uart, I2C: motion, Pulse: pulse, ChipTemp: func() float64 { return sensors.ChipTemperature(chip.Get()) }, OneWire: fb.temp.Bus(),
		ConfigSwitch: fb.sw, LED: fb.led, Storage: fb.flash, Noise: rand.Reader,
		Factory: device.Factory{Serial: "0042", APPassword: "label-passphrase", ProvisioningKey: [16]byte([]byte("provisioning-key"))},
		Log:     func(s string) { t.Log("firmware: " + s) },
	}
	return fb
}

// checkValues compares what MQTT received with what the fake sensors measure.
func checkValues(t *testing.T, r jsonReading) {
	t.Helper()
	want := map[string]float64{"Temp": 36.625, "TempMcu": 23.7, "PulseSig": 1.735, "Acel_x": 0.01, "Acel_y": -0.02, "Acel_z": 0.98, "TempMpu": 24.5}
	for k, w := range want {
		got, err := strconv.ParseFloat(r.Values[k], 64)
		// Sensor quantisation (ADC 16 bit, MPU6050 1/16384 g, 1/340 °C) and
		// the three-decimal format bound the error.
		if err != nil || math.Abs(got-w) > 0.011 {
			t.Errorf("%s = %q, want %.3f", k, r.Values[k], w)
		}
	}
}

func testConfig(proto string) device.Config {
	return device.Config{WiFiSSID: "ward-7", WiFiPassword: "wpa2-passphrase", Server: "medpipe.ward7.example", Port: 9998,
		Device: wire.Device{ID: "pico-ward7-bed3", Key: [16]byte([]byte("k3y-of-bed3-0016")), IV: [16]byte([]byte("iv-of-bed3-00016"))}, Protocol: proto}
}

// TestWorkingModeDeliversReadings runs working mode against a real
// pipeline, for v2 (with the Wi-Fi link dropped mid-run: the device
// reconnects and resends what was not acknowledged) and legacy.
func TestWorkingModeDeliversReadings(t *testing.T) {
	for _, proto := range []string{device.ProtocolV2, device.ProtocolLegacy} {
		t.Run(proto, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			cfg := testConfig(proto)
			p := startPipeline(t, cfg.Device)
			fb := newBoard(t, p.edge)
			const readings = 60
			// The Pico's own clock counts from power-on; SNTP through the
			// ESP8266 must set v2 readings' time.
			boot := time.Now()
			fb.Clock = func() time.Time { return time.Unix(0, 0).Add(time.Since(boot)) }
			d := device.New(fb.Board, device.Options{Readings: readings})
			done := make(chan error, 1)
			go func() { done <- d.Work(ctx, cfg) }()
			if proto == device.ProtocolV2 {
				time.Sleep(1500 * time.Millisecond)
				fb.mod.DropLinks() // the access point drops the device
			}
			if err := <-done; err != nil {
				t.Fatalf("working mode: %v (stats %+v)", err, d.Stats)
			}
			want := readings
			if proto == device.ProtocolLegacy {
				want -= int(d.Stats.Dropped)
			}
			got := p.waitReadings(ctx, t, cfg.Device.ID, want)
			t.Logf("%s: device made %d readings, sent %d, acked %d, reconnects %d; MQTT received %d", proto, d.Stats.Readings, d.Stats.Sent, d.Stats.Acked, d.Stats.Reconnects, len(got))
			checkValues(t, got[len(got)-1])
			if proto == device.ProtocolV2 {
				seen := map[uint64]bool{}
				for _, r := range got {
					seen[r.Seq] = true
				}
				// A new device's first boot epoch is 1: the high half of
				// every sequence number of this boot.
				for n := uint64(1); n <= readings; n++ {
					if seq := 1<<32 | n; !seen[seq] {
						t.Errorf("v2 reading %d (seq %#x) lost", n, seq)
					}
				}
				// The module's clock has whole seconds, so the device's
				// time is within half a second of the edge's, plus the trip
				// (and, for frames resent after the drop, the wait).
				var lags []time.Duration
				for _, r := range got {
					lag := r.Received.Sub(r.DeviceTime)
					if lag < -600*time.Millisecond {
						t.Errorf("v2 reading %d: device time %v is after its receipt %v", r.Seq, r.DeviceTime, r.Received)
					}
					lags = append(lags, lag)
				}
				slices.Sort(lags)
				if median := lags[len(lags)/2]; median > 600*time.Millisecond {
					t.Errorf("v2 readings reach the edge %v after their device time (median): the clock was not set by SNTP", median)
				}
				if d.Stats.Reconnects == 0 {
					t.Error("the dropped link went unnoticed")
				}
			}
		})
	}
}

// TestConfigurationPageInBrowser runs the firmware from power-on with the
// switch on configuration: headless Chromium loads the page through the
// fake ESP8266's server, fills in and submits the form; the firmware must
// store exactly what was entered, switch to working mode and deliver
// readings to the pipeline it was pointed at.
func TestConfigurationPageInBrowser(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	want := testConfig(device.ProtocolV2)
	p := startPipeline(t, want.Device)
	fb := newBoard(t, p.edge)
	fb.sw.Set(true)
	d := device.New(fb.Board, device.Options{Readings: 20})
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	for fb.mod.ServerAddr() == nil {
		select {
		case err := <-done:
			t.Fatalf("firmware ended: %v", err)
		case <-ctx.Done():
			t.Fatal("no HTTP server on the access point")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if ap := fb.mod.AccessPoint(); ap.SSID != "medpipe-0042" || ap.Password != "label-passphrase" || ap.Encryption != 3 {
		t.Fatalf("access point %+v", ap)
	}
	base := "http://" + fb.mod.ServerAddr().String() + "/"
	b := browser.Start(ctx, t)
	var msg string
	fill := func(id, v string) chromedp.Action { return chromedp.SetValue("#"+id, v, chromedp.ByQuery) }
	start := time.Now()
	err := chromedp.Run(b,
		chromedp.Navigate(base),
		chromedp.WaitVisible("#save", chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("load the page: %v", err)
	}
	loaded := time.Since(start)
	wireSize := len(pageSize(t, base))
	// A wrong provisioning key first: the device must refuse it.
	err = chromedp.Run(b,
		fill("ssid", want.WiFiSSID), fill("pass", want.WiFiPassword), fill("host", want.Server),
		fill("port", strconv.Itoa(want.Port)), fill("id", want.Device.ID),
		fill("key", string(want.Device.Key[:])), fill("iv", string(want.Device.IV[:])),
		chromedp.SetValue("#proto", want.Protocol, chromedp.ByQuery),
		fill("pk", strings.Repeat("ab", 16)),
		chromedp.Click("#save", chromedp.ByQuery),
		chromedp.Poll(`document.getElementById('msg').className == 'err'`, nil, chromedp.WithPollingTimeout(20*time.Second)),
		chromedp.Text("#msg", &msg, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("submit with a wrong key: %v", err)
	}
	if !strings.Contains(msg, "authentication") {
		t.Fatalf("wrong provisioning key answered %q", msg)
	}
	if _, err := device.LoadConfig(fb.flash); !errors.Is(err, device.ErrNoConfig) {
		t.Fatalf("a refused form was stored: %v", err)
	}
	err = chromedp.Run(b,
		fill("pk", "70726f766973696f6e696e672d6b6579"), // "provisioning-key" in hex, as on the label
		chromedp.Click("#save", chromedp.ByQuery),
		chromedp.Poll(`document.getElementById('msg').className == 'ok'`, nil, chromedp.WithPollingTimeout(20*time.Second)),
		chromedp.Text("#msg", &msg, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	got, err := device.LoadConfig(fb.flash)
	if err != nil {
		t.Fatalf("stored configuration: %v", err)
	}
	if got != want {
		t.Fatalf("stored %+v\nwant   %+v", got, want)
	}
	t.Logf("page loaded in %v (%d bytes gzipped); device answered %q", loaded.Round(time.Millisecond), wireSize, msg)
	if err := <-done; err != nil {
		t.Fatalf("firmware after configuration: %v", err)
	}
	if fb.mod.Joined() != want.WiFiSSID {
		t.Fatalf("working mode joined %q", fb.mod.Joined())
	}
	// Leaving configuration mode closed the port-80 server before working
	// mode's AT+CIPMUX: the module refused nothing.
	if fb.mod.ServerAddr() != nil || fb.mod.Refused.Load() != 0 {
		t.Fatalf("after configuration: server %v, %d commands refused", fb.mod.ServerAddr(), fb.mod.Refused.Load())
	}
	checkValues(t, p.waitReadings(ctx, t, want.Device.ID, 20)[19])
}

// pageSize fetches the page as a browser does and checks it comes
// gzip-compressed; it returns the bytes on the wire.
func pageSize(t *testing.T, url string) []byte {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Content-Encoding") != "gzip" || len(body) > page.MaxSize {
		t.Fatalf("page: %s, Content-Encoding %q, %d bytes", resp.Status, resp.Header.Get("Content-Encoding"), len(body))
	}
	return body
}

// TestRebootContinuesSequence power-cycles a v2 device between two runs
// on the same flash (as a reboot or a reflash does: a UF2 writes only its
// own pages): the second boot's frames carry boot epoch 2 in the high half
// of their sequence numbers, above every frame of the first, and the
// pipeline delivers all of both.
func TestRebootContinuesSequence(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cfg := testConfig(device.ProtocolV2)
	p := startPipeline(t, cfg.Device)
	const perBoot = 20
	first := newBoard(t, p.edge)
	d := device.New(first.Board, device.Options{Readings: perBoot})
	if err := d.Work(ctx, cfg); err != nil {
		t.Fatalf("first boot: %v", err)
	}
	first.mod.Close()
	second := newBoard(t, p.edge)
	second.Storage = first.flash // the same chip after the power cycle
	d = device.New(second.Board, device.Options{Readings: perBoot})
	if err := d.Work(ctx, cfg); err != nil {
		t.Fatalf("second boot: %v", err)
	}
	got := p.waitReadings(ctx, t, cfg.Device.ID, 2*perBoot)
	seen := map[uint64]bool{}
	for _, r := range got {
		seen[r.Seq] = true
	}
	for boot := uint64(1); boot <= 2; boot++ {
		for n := uint64(1); n <= perBoot; n++ {
			if seq := boot<<32 | n; !seen[seq] {
				t.Errorf("boot %d reading %d (seq %#x) not delivered", boot, n, seq)
			}
		}
	}
}
