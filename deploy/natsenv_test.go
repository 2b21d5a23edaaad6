package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestNATSEnvScript runs nats-env.sh as compose and systemd do, with one
// secret file per variable, and checks it exports exactly the variables
// deploy/nats's configs read (every `$MEDPIPE_…` they name), each with its
// file's content, and that a missing secret stops it with a clear error
// instead of starting nats-server with an empty password.
func TestNATSEnvScript(t *testing.T) {
	var want []string
	ref := regexp.MustCompile(`\$(MEDPIPE_[A-Z0-9_]+)`)
	confs, _ := filepath.Glob(filepath.Join("nats", "*.conf"))
	if len(confs) == 0 {
		t.Fatal("no deploy/nats/*.conf")
	}
	for _, c := range confs {
		b, err := os.ReadFile(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ref.FindAllStringSubmatch(string(b), -1) {
			if !slices.Contains(want, m[1]) {
				want = append(want, m[1])
			}
		}
	}
	// The secret file of each variable: MEDPIPE_NATS_<ROLE>_PASSWORD is
	// nats-<role>-password, MEDPIPE_JETSTREAM_KEY is jetstream-key.
	file := func(v string) string {
		if v == "MEDPIPE_JETSTREAM_KEY" {
			return "jetstream-key"
		}
		role := strings.TrimSuffix(strings.TrimPrefix(v, "MEDPIPE_NATS_"), "_PASSWORD")
		return "nats-" + strings.ToLower(role) + "-password"
	}
	dir := t.TempDir()
	for _, v := range want {
		if err := os.WriteFile(filepath.Join(dir, file(v)), []byte("mp-"+v+"\n"), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	run := func() (string, error) {
		cmd := exec.Command("sh", "nats-env.sh", "env")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "SECRETS_DIR=" + dir}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run()
	if err != nil {
		t.Fatalf("nats-env.sh env: %v\n%s", err, out)
	}
	got := map[string]string{}
	for line := range strings.SplitSeq(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "MEDPIPE_") {
			got[k] = v
		}
	}
	for _, v := range want {
		if got[v] != "mp-"+v {
			t.Errorf("%s = %q, want the content of %s", v, got[v], file(v))
		}
		delete(got, v)
	}
	for k := range got {
		t.Errorf("nats-env.sh exports %s, which no deploy/nats config reads", k)
	}
	if err := os.Remove(filepath.Join(dir, file(want[0]))); err != nil {
		t.Fatal(err)
	}
	if out, err := run(); err == nil || !strings.Contains(out, "init.sh") {
		t.Errorf("with %s missing: %v\n%s", file(want[0]), err, out)
	}
}
