package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// completionScript writes `medpipe completion shell` to a file.
func completionScript(t *testing.T, shell string) string {
	t.Helper()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"completion", shell}, &out, &out); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "medpipe."+shell)
	if err := os.WriteFile(p, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// shell finds a shell, or fails: scripts/test.sh installs zsh and fish,
// and a completion left untested must not pass as a skip.
func shell(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed: run ./scripts/test.sh (it installs it) or apt-get install %s", name, name)
	}
	return p
}

// TestCompletion asks each shell itself to complete command lines with the
// generated script.
func TestCompletion(t *testing.T) {
	cases := []struct {
		line string   // what was typed
		want []string // among the candidates
	}{
		{"medpipe dec", []string{"decrypt"}},
		{"medpipe up --simu", []string{"--simulate"}},
		{"medpipe up --mqtt-p", []string{"--mqtt-password-file", "--mqtt-port"}},
		{"medpipe keys ", []string{"import", "rotate", "reset-mark", "audit"}},
		{"medpipe archive ", []string{"export", "import", "verify"}},
		{"medpipe archive export --o", []string{"--out"}},
		{"medpipe config ", []string{"validate", "example"}},
		{"medpipe completion ", []string{"bash", "zsh", "fish"}},
	}
	t.Run("bash", func(t *testing.T) {
		script := completionScript(t, "bash")
		for _, tc := range cases {
			words := strings.Fields(tc.line)
			if strings.HasSuffix(tc.line, " ") {
				words = append(words, "")
			}
			var quoted []string
			for _, w := range words {
				quoted = append(quoted, "'"+w+"'")
			}
			prog := "source " + script + "; COMP_WORDS=(" + strings.Join(quoted, " ") + "); COMP_CWORD=" +
				strconv.Itoa(len(words)-1) + "; _medpipe; printf '%s\\n' \"${COMPREPLY[@]}\""
			out, err := exec.Command(shell(t, "bash"), "-c", prog).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", tc.line, err, out)
			}
			wantAll(t, tc.line, string(out), tc.want)
		}
	})
	t.Run("fish", func(t *testing.T) {
		script := completionScript(t, "fish")
		for _, tc := range cases {
			out, err := exec.Command(shell(t, "fish"), "-c", "source "+script+"; complete -C'"+tc.line+"'").CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", tc.line, err, out)
			}
			wantAll(t, tc.line, string(out), tc.want)
		}
	})
	t.Run("zsh", func(t *testing.T) {
		script := completionScript(t, "zsh")
		if out, err := exec.Command(shell(t, "zsh"), "-n", script).CombinedOutput(); err != nil {
			t.Fatalf("zsh -n: %v\n%s", err, out)
		}
		// The function loads and registers itself with compinit.
		prog := "autoload -U compinit && compinit -u -D && source " + script + " && print -r -- ${_comps[medpipe]}"
		out, err := exec.Command(shell(t, "zsh"), "-f", "-c", prog).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "_medpipe" {
			t.Fatalf("zsh: completion not registered: %v\n%s", err, out)
		}
	})
}

func wantAll(t *testing.T, line, got string, want []string) {
	t.Helper()
	for _, w := range want {
		found := false
		for _, l := range strings.Split(got, "\n") {
			if strings.Fields(l + " x")[0] == w {
				found = true
			}
		}
		if !found {
			t.Errorf("%q: %q not among the candidates:\n%s", line, w, got)
		}
	}
}
