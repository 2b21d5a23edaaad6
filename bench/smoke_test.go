package bench

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/medpipe/medpipe/testkit"
)

// benchBinary builds medpipe with -tags bench: the process and drain modes
// run their nats-server as `medpipe bench --serve-nats`, which only that
// build links (testkit.MedpipeBinary builds the release binary).
func benchBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "medpipe")
	if out, err := exec.Command("go", "build", "-tags", "bench", "-o", bin, "github.com/medpipe/medpipe/cmd/medpipe").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags bench: %v\n%s", err, out)
	}
	return bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	testkit.RemoveBuilt()
	os.Exit(code)
}

// TestSmoke runs short scenarios on the real stack, embedded and as
// separate processes: every reading is accounted for (none lost, none
// duplicated in a clean run), and the report and plots are written. It
// checks the accounting, not the speed.
func TestSmoke(t *testing.T) {
	bin := benchBinary(t)
	for _, tc := range []struct{ mode, broker string }{
		{ModeEmbedded, BrokerStack},
		{ModeProcess, BrokerStack},
		{ModeEmbedded, BrokerMosquitto}, // up publishing to an external broker
	} {
		mode := tc.mode
		t.Run(mode+"/"+tc.broker, func(t *testing.T) {
			if _, err := exec.LookPath("mosquitto"); tc.broker == BrokerMosquitto && err != nil {
				t.Skip("mosquitto not on PATH: this case starts one")
			}
			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			out := t.TempDir()
			var logs testkit.SyncBuffer
			rep, err := Run(ctx, Options{Binary: bin, Mode: mode, Broker: tc.broker, Devices: 200, Rate: 2, Warmup: 2 * time.Second, Duration: 8 * time.Second, Drain: 20 * time.Second, Ceilings: mode == ModeEmbedded, Out: out,
				Log: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			noPasswords(t, "the bench's log", logs.String())
			for _, f := range []string{"report.md", "report.json"} {
				b, _ := os.ReadFile(filepath.Join(out, f))
				noPasswords(t, f, string(b))
			}
			r := rep.Results[0]
			t.Logf("%s: %+v, latency %+v, %0.f readings/s", mode, r.Totals, r.Latency, r.Delivered)
			if r.Totals.Sent == 0 || r.Totals.Lost != 0 || r.Totals.Duplicated != 0 {
				t.Fatalf("accounting: %+v", r.Totals)
			}
			if r.Latency.Count == 0 || r.FramesIn == 0 || r.MQTTMessages == 0 || len(r.Usage) == 0 {
				t.Fatalf("figures missing: %+v", r)
			}
			if usedMosquitto := slices.ContainsFunc(r.Usage, func(u ProcUsage) bool { return u.Name == "mosquitto" }); usedMosquitto != (tc.broker == BrokerMosquitto) || strings.Contains(r.Mode, "Mosquitto") != usedMosquitto {
				t.Fatalf("broker %s: mode %q, processes %+v", tc.broker, r.Mode, r.Usage)
			}
			if mode == ModeEmbedded && (r.Ceilings == nil || r.Ratio <= 0) {
				t.Fatalf("ceilings missing: %+v", r.Ceilings)
			}
			for _, f := range []string{"report.md", "report.json", "throughput.png", "latency.png", "latency-cdf.png"} {
				if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
					t.Fatalf("%s not written: %v", f, err)
				}
			}
			old, err := ReadReport(filepath.Join(out, "report.json"))
			if err != nil || len(old.Results) != 1 {
				t.Fatalf("report.json does not read back: %v", err)
			}
		})
	}
}

// TestSmokeDrain runs the drain scenario small: every stored frame
// reaches the broker once, and the figures are there.
func TestSmokeDrain(t *testing.T) {
	if _, err := exec.LookPath("mosquitto"); err != nil {
		t.Skip("mosquitto not on PATH: the drain scenario starts one")
	}
	bin := benchBinary(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out := t.TempDir()
	rep, err := Run(ctx, Options{Binary: bin, Scenario: ScenarioDrain, Devices: 50, Rate: 20, Frames: 2000, Drain: 30 * time.Second, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Results[0]
	t.Logf("drain: %+v, %+v", r.Totals, *r.Drain)
	if r.Totals.Sent != 2000 || r.Totals.Delivered != 2000 || r.Totals.Lost != 0 || r.Totals.Duplicated != 0 || r.Totals.Reordered != 0 {
		t.Fatalf("accounting: %+v", r.Totals)
	}
	if d := r.Drain; d.PerSec <= 0 || d.PublishedPerSec <= 0 || d.CPUPer1000 <= 0 || d.MicrosPerReading["nats-server"] <= 0 || d.MicrosPerReading["decrypt"] <= 0 {
		t.Fatalf("figures missing: %+v", d)
	}
	if st, err := os.Stat(filepath.Join(out, "report.md")); err != nil || st.Size() == 0 {
		t.Fatalf("report.md not written: %v", err)
	}
}

// userinfo matches the user and password of a URL.
var userinfo = regexp.MustCompile(`://[^:/@\s"]+:([^@\s"]*)@`)

// noPasswords fails the test if text holds a URL with a password that is
// not redacted (url.URL.Redacted writes xxxxx).
func noPasswords(t *testing.T, what, text string) {
	t.Helper()
	for _, m := range userinfo.FindAllStringSubmatch(text, -1) {
		if m[1] != "xxxxx" {
			t.Errorf("%s holds a URL with its password: %s", what, m[0])
		}
	}
}
