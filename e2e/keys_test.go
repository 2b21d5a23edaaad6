package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/provision"
	"github.com/medpipe/medpipe/wire"
)

func TestKeysCommand(t *testing.T) {
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, MQTTPort: -2, HTTPPort: -2, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	keysFile := filepath.Join(t.TempDir(), "keys.jsonl")
	const secret = "SeCrEt0123456789"
	lines := `{ "id":"iot_med_dev_01", "key":"` + secret + `", "iv":"AAAAAAAAAAAAAAAA"}` + "\n" +
		`{ "id":"iot_med_dev_02", "key":"AAAAAAAAAAAAAAAA", "iv":"AAAAAAAAAAAAAAAA"}` + "\n"
	if err := os.WriteFile(keysFile, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	keys := func(args ...string) (string, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		if err := run(t.Context(), append([]string{"keys", "--nats", e.ClientURL()}, args...), &out, &errOut); err != nil {
			t.Fatalf("keys %v: %v\n%s", args, err, errOut.String())
		}
		return out.String(), errOut.String()
	}
	if out, _ := keys("import", keysFile); !strings.HasPrefix(out, "added 2, changed 0, unchanged 0") {
		t.Fatalf("import: %s", out)
	}
	if out, _ := keys("import", keysFile); !strings.HasPrefix(out, "added 0, changed 0, unchanged 2") {
		t.Fatalf("import again: %s", out)
	}
	out, _ := keys("add", "new-device")
	devs, err := wire.ReadKeys(strings.NewReader(out))
	if err != nil || len(devs) != 1 || devs[0].ID != "new-device" {
		t.Fatalf("add printed %q: %v", out, err)
	}
	cfg := filepath.Join(t.TempDir(), "dev.jsonl")
	out, _ = keys("--config-out", cfg, "rotate", "new-device")
	if strings.Contains(out, string(devs[0].Key[:])) {
		t.Fatal("rotate with --config-out printed a key")
	}
	if st, err := os.Stat(cfg); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v %v", st, err)
	}
	// One command registers a wearable and writes its factory block, as a
	// UF2 for the Pico's boot ROM; the label's secrets are printed once.
	uf2 := filepath.Join(t.TempDir(), "bed-3.uf2")
	out, _ = keys("--config-out", filepath.Join(t.TempDir(), "bed-3.jsonl"), "--firmware-config", uf2, "add", "bed-3")
	blob, err := os.ReadFile(uf2)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(uf2); st.Mode().Perm() != 0o600 {
		t.Fatalf("factory block mode %v", st.Mode())
	}
	sector, err := provision.ReadUF2(blob, provision.FactoryAddr, provision.SectorSize)
	if err != nil {
		t.Fatal(err)
	}
	f, err := provision.Parse(sector)
	if err != nil || f.Serial != "bed-3" || !strings.Contains(out, f.APPassword) || !strings.Contains(out, "medpipe-bed-3") {
		t.Fatalf("factory block %+v, %v; printed %q", f.Serial, err, out)
	}
	list, _ := keys("list")
	if strings.Contains(list, secret) || !strings.Contains(list, "iot_med_dev_01") || !strings.Contains(list, "new-device") {
		t.Fatalf("list:\n%s", list)
	}
	if list, _ := keys("--show-secrets", "list"); !strings.Contains(list, secret) {
		t.Fatalf("list --show-secrets lacks the key:\n%s", list)
	}
	keys("revoke", "iot_med_dev_02")
	exported, _ := keys("export")
	if strings.Contains(exported, "iot_med_dev_02") || !strings.Contains(exported, secret) {
		t.Fatalf("export:\n%s", exported)
	}
	// Re-importing yesterday's file leaves a revoked device revoked.
	if out, _ := keys("import", keysFile); !strings.HasPrefix(out, "added 0, changed 0, unchanged 1, revoked (left revoked) 1") {
		t.Fatalf("import after revoke: %s", out)
	}
	if list, _ := keys("list"); !revokedIn(list, "iot_med_dev_02") {
		t.Fatalf("iot_med_dev_02 un-revoked by an import:\n%s", list)
	}
	// Every operation that changed or showed a key is in the audit, with a
	// fingerprint and never the key.
	audit, _ := keys("audit")
	for _, want := range []string{"import  iot_med_dev_01", "add     new-device", "rotate  new-device", "revoke  iot_med_dev_02", "export  iot_med_dev_01", "list-secrets  iot_med_dev_01"} {
		if !strings.Contains(strings.Join(strings.Fields(audit), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("audit lacks %q:\n%s", want, audit)
		}
	}
	if strings.Contains(audit, secret) || !strings.Contains(audit, "sha256:") {
		t.Fatalf("audit shows a key or no fingerprint:\n%s", audit)
	}
}

// revokedIn reports whether list's row of id has a revocation time.
func revokedIn(list, id string) bool {
	for line := range strings.SplitSeq(list, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == id {
			return f[3] != "-"
		}
	}
	return false
}
