package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// writeConfig writes a config file for one test.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "medpipe.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigPrecedence checks flag > MEDPIPE_* > section > top level >
// default, through a flag whose bad value names itself in the error.
func TestConfigPrecedence(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "k")
	simulate := func(t *testing.T, args ...string) error {
		var out bytes.Buffer
		return run(context.Background(), append([]string{"simulate", "--keys", keys, "--devices", "1", "--duration", "200ms", "--server", "127.0.0.1:1"}, args...), &out, &out)
	}
	wantValue := func(t *testing.T, err error, v string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), `"`+v+`"`) {
			t.Fatalf("want the value %q applied, got %v", v, err)
		}
		if exitCode(err) != exitUsage {
			t.Fatalf("exit %d for %v", exitCode(err), err)
		}
	}
	top := writeConfig(t, "log-format: yaml\n")
	both := writeConfig(t, "log-format: yaml\nsimulate:\n  log-format: xml\n")
	t.Run("top level applies", func(t *testing.T) { wantValue(t, simulate(t, "--config", top), "yaml") })
	t.Run("section wins over top level", func(t *testing.T) { wantValue(t, simulate(t, "--config", both), "xml") })
	t.Run("MEDPIPE_CONFIG names the file", func(t *testing.T) {
		t.Setenv("MEDPIPE_CONFIG", both)
		wantValue(t, simulate(t), "xml")
	})
	t.Run("environment wins over the file", func(t *testing.T) {
		t.Setenv("MEDPIPE_LOG_FORMAT", "toml")
		wantValue(t, simulate(t, "--config", both), "toml")
	})
	t.Run("flag wins over everything", func(t *testing.T) {
		t.Setenv("MEDPIPE_LOG_FORMAT", "toml")
		wantValue(t, simulate(t, "--config", both, "--log-format", "ini"), "ini")
	})
	t.Run("another command's section does not apply", func(t *testing.T) {
		other := writeConfig(t, "up:\n  log-format: xml\n")
		if err := simulate(t, "--config", other); err != nil && strings.Contains(err.Error(), "xml") {
			t.Fatalf("up's section applied to simulate: %v", err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string // substrings of the report, with line numbers
	}{
		{"ok", "log-level: debug\nup:\n  simulate: 10\n  status-every: 2s\nreplay:\n  device: [dev1, dev2]\narchive:\n  export:\n    out: raw.mpa.zst\n", nil},
		{"empty", "", nil},
		{"unknown top-level key", "log-level: info\nfrobs: 3\n", []string{":2: frobs: unknown key"}},
		{"unknown key in a section", "up:\n  nats: nats://x:4222\n", []string{":2: up: nats: unknown key (not a flag of medpipe up)"}},
		{"bad value", "up:\n  simulate: many\n", []string{`:2: up: simulate: "many"`}},
		{"bad duration", "raw-max-age: forever\n", []string{`:1: raw-max-age: "forever"`}},
		{"bad enum", "stream-compression: zip\n", []string{`:1: stream-compression: "zip": unknown stream compression`}},
		{"unknown section", "frobnicate:\n  x: 1\n", []string{`:1: unknown section "frobnicate"`}},
		{"unknown subcommand", "archive:\n  shred:\n    out: x\n", []string{`:2: archive: unknown subcommand section "shred"`}},
		{"password refused", "nats-password: hunter2\n", []string{":1: nats-password: secrets never go in the config file"}},
		{"password in a URL refused", "nats: nats://medpipe:hunter2@nats:4222\n", []string{":1: nats: a URL with a password"}},
		{"no nesting", "config: other.yaml\n", []string{":1: config: a config file cannot name another"}},
		{"deprecated spelling", "max-inflight: 10\n", []string{":1: max-inflight: deprecated spelling; use decrypt-in-flight"}},
		{"duplicate", "log-level: info\nlog-level: debug\n", []string{":2: log-level: given twice (first at line 1)"}},
		{"list for a single value", "log-level: [info, debug]\n", []string{":1: log-level: takes one value"}},
		{"syntax", "up:\n  simulate: 1\n bad indent: x\n", []string{"yaml: line 2: did not find expected key"}},
		{"not a mapping", "- a\n- b\n", []string{"want a mapping"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConfig(t, tc.body)
			var out, errOut bytes.Buffer
			err := run(context.Background(), []string{"config", "validate", p}, &out, &errOut)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("valid file refused: %v", err)
				}
				return
			}
			if exitCode(err) != exitUsage {
				t.Fatalf("exit %d (%v), want %d", exitCode(err), err, exitUsage)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("report lacks %q:\n%v", w, err)
				}
			}
			// A command given the same file refuses to start, the same way.
			if err := run(context.Background(), []string{"healthcheck", "--config", p}, &out, &errOut); exitCode(err) != exitUsage {
				t.Errorf("healthcheck with the file: exit %d (%v)", exitCode(err), err)
			}
		})
	}
}

// exampleKey is a commented-out key line of the example file.
var exampleKey = regexp.MustCompile(`(?m)^( *)#([a-z0-9-]+: )`)

// TestConfigExample keeps deploy/medpipe.example.yaml equal to what
// `medpipe config example` prints, and checks that the example is valid
// with every key uncommented (so each is a real flag with a valid default).
func TestConfigExample(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"config", "example"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	shipped, err := os.ReadFile(filepath.Join("..", "..", "deploy", "medpipe.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(shipped, out.Bytes()) {
		t.Error("deploy/medpipe.example.yaml differs from `medpipe config example`: regenerate it with\n  go run ./cmd/medpipe config example > deploy/medpipe.example.yaml")
	}
	for _, body := range []string{out.String(), exampleKey.ReplaceAllString(out.String(), "$1$2")} {
		if _, problems := parseConfig("example", []byte(body)); len(problems) > 0 {
			t.Fatalf("example invalid: %v", (&configError{path: "example", problems: problems}).Error())
		}
	}
	uncommented := exampleKey.ReplaceAllString(out.String(), "$1$2")
	// Every flag of every configured command is in the example.
	cfg, _ := parseConfig("example", []byte(uncommented))
	for _, c := range configuredCommands() {
		for _, g := range groupFlags(c.fs) {
			for _, f := range g.flags {
				if f.Name == configFlagName || g.title == groupDeprecated {
					continue
				}
				if _, ok := cfg.lookup(c.name(), f.Name); !ok {
					t.Errorf("%s: --%s missing from the example", c.name(), f.Name)
				}
			}
		}
	}
}
