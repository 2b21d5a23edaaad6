package deploy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// loadCompose loads a compose file with the compose-spec reference loader
// (what docker compose itself uses: schema validation, merge keys,
// profiles), as `docker compose --profile ...` would.
func loadCompose(t *testing.T, file string, profiles ...string) *types.Project {
	t.Helper()
	o, err := cli.NewProjectOptions([]string{file}, cli.WithWorkingDirectory("."), cli.WithProfiles(profiles), cli.WithResolvedPaths(false))
	if err != nil {
		t.Fatal(err)
	}
	p, err := o.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("compose %s (profiles %v): %v", file, profiles, err)
	}
	return p
}

// initSecrets runs deploy/secrets/init.sh as a user would (a copy of it, so
// its own directory is a temp dir) and returns the secrets it made.
func initSecrets(t *testing.T) map[string]os.FileMode {
	t.Helper()
	dir := t.TempDir()
	b, err := os.ReadFile(filepath.Join("secrets", "init.sh"))
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "init.sh")
	if err := os.WriteFile(script, b, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the second run keeps what the first made
		if out, err := exec.Command("sh", script).CombinedOutput(); err != nil {
			t.Fatalf("init.sh (run %d): %v\n%s", i+1, err, out)
		}
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("init.sh left its directory %v, want 0700", st.Mode())
	}
	made := map[string]os.FileMode{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() == "init.sh" {
			continue
		}
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		made[e.Name()] = info.Mode().Perm()
		v, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if len(v) < 32 || !strings.HasPrefix(string(v), "mp") {
			t.Errorf("init.sh: %s = %q: want a random secret starting with letters", e.Name(), v)
		}
	}
	return made
}

// TestComposeProjects loads both compose files, every profile, with the
// compose-spec loader, and checks what issue 16 and 18 found: nothing
// published that is anonymous or admin-only, every secret a service reads
// is mounted into it and made by secrets/init.sh readable by the
// container's user, one-shot jobs run in order, the simulated devices never
// see the production keys, Node-RED's editor has its login.
func TestComposeProjects(t *testing.T) {
	made := initSecrets(t)
	for name, mode := range made {
		if mode != 0o444 {
			t.Errorf("init.sh made %s mode %v: the containers' users (65532, 1000, 1883) cannot read it", name, mode)
		}
	}
	for _, tc := range []struct {
		file     string
		profiles []string
	}{
		{"compose.minimal.yaml", nil},
		{"compose.yaml", nil},
		{"compose.yaml", []string{"simulate"}},
		{"compose.yaml", []string{"tools"}},
	} {
		t.Run(tc.file+"/"+strings.Join(tc.profiles, ","), func(t *testing.T) {
			p := loadCompose(t, tc.file, tc.profiles...)
			for name, s := range p.Services {
				where := tc.file + ": " + name
				mounted := map[string]bool{}
				for _, sec := range s.Secrets {
					mounted[sec.Source] = true
					def, ok := p.Secrets[sec.Source]
					if !ok {
						t.Errorf("%s: secret %s not declared", where, sec.Source)
						continue
					}
					base := filepath.Base(def.File)
					if _, ok := made[base]; !ok && base != "keys.jsonl" {
						t.Errorf("%s: secret file %s is not made by secrets/init.sh", where, def.File)
					}
				}
				args := append(slices.Clone(s.Entrypoint), s.Command...)
				for _, e := range s.Environment {
					if e != nil {
						args = append(args, *e)
					}
				}
				for _, a := range args {
					if rest, ok := strings.CutPrefix(a, "/run/secrets/"); ok && !mounted[rest] {
						t.Errorf("%s: reads %s but is not given secret %s", where, a, rest)
					}
				}
				for _, port := range s.Ports {
					switch port.Target {
					case 4222, 6222, 8222, 18083:
						if port.HostIP != "127.0.0.1" {
							t.Errorf("%s: publishes %d on every interface", where, port.Target)
						}
					}
				}
				for dep, d := range s.DependsOn {
					if _, ok := p.Services[dep]; !ok && d.Required {
						t.Errorf("%s: depends on %s, which is not in the project", where, dep)
					}
				}
				if strings.HasPrefix(name, "sim") && mounted["keys.jsonl"] {
					t.Errorf("%s: simulated devices get the production keys", where)
				}
				if name == "node-red" {
					if s.Environment["NODE_RED_ADMIN_PASSWORD_FILE"] == nil || s.Environment["MQTT_USER"] == nil || *s.Environment["MQTT_USER"] != "dashboard" {
						t.Errorf("%s: no editor login or not the dashboard's MQTT user: %v", where, s.Environment)
					}
				}
				if len(s.Command) > 0 && s.Command[0] == "up" && flagValue(s.Command, "host") == "0.0.0.0" {
					for _, port := range s.Ports {
						if port.Target == 4222 {
							t.Errorf("%s: up publishes NATS", where)
						}
					}
				}
				// Stages connect to NATS with their own role.
				if strings.HasPrefix(s.Image, "medpipe/medpipe") && len(s.Command) > 0 && tc.file == "compose.yaml" {
					switch s.Command[0] {
					case "ingest", "decrypt", "publish":
						if flagValue(s.Command, "nats-user") != s.Command[0] {
							t.Errorf("%s: %s connects to NATS as %q", where, s.Command[0], flagValue(s.Command, "nats-user"))
						}
					case "keys", "streams":
						if flagValue(s.Command, "nats-user") != "admin" {
							t.Errorf("%s: %s connects to NATS as %q, want admin", where, s.Command[0], flagValue(s.Command, "nats-user"))
						}
					}
				}
			}
		})
	}
}
