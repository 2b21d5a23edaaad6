// Package deploy holds medpipe's deployment files (container image, docker
// compose, Kubernetes, systemd, Node-RED) and the tests that check them
// against the CLI: Docker cannot run here, so every file is validated
// statically, and a renamed flag breaks these tests, not production.
package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/medpipe/medpipe/testkit"
)

// cliFlags is what `medpipe <cmd> -h` documents: flags and their variables.
type cliFlags struct {
	flags map[string]bool // without the leading --
	envs  map[string]bool
}

var (
	helpCache = map[string]cliFlags{}
	helpMu    sync.Mutex
)

var helpLine = regexp.MustCompile(`^\s+--([a-z0-9-]+)\b`)
var envRef = regexp.MustCompile(`\[(MEDPIPE_[A-Z0-9_]+)\]`)

// help returns the documented flags of a subcommand, from the built binary.
func help(t *testing.T, cmd string) cliFlags {
	t.Helper()
	helpMu.Lock()
	defer helpMu.Unlock()
	if f, ok := helpCache[cmd]; ok {
		return f
	}
	out, _ := exec.Command(testkit.MedpipeBinary(t), cmd, "-h").CombinedOutput()
	f := cliFlags{flags: map[string]bool{}, envs: map[string]bool{}}
	for line := range strings.SplitSeq(string(out), "\n") {
		if m := helpLine.FindStringSubmatch(line); m != nil {
			f.flags[m[1]] = true
		}
		if m := envRef.FindStringSubmatch(line); m != nil {
			f.envs[m[1]] = true
		}
	}
	if len(f.flags) == 0 {
		t.Fatalf("medpipe %s -h lists no flags:\n%s", cmd, out)
	}
	// Secrets read from the environment only, never from a flag.
	f.envs["MEDPIPE_NATS_PASSWORD"], f.envs["MEDPIPE_MQTT_PASSWORD"] = true, true
	helpCache[cmd] = f
	return f
}

// invocation is one medpipe command line found in a deploy file.
type invocation struct {
	where string
	args  []string // after the binary: subcommand, then flags
	env   []string // MEDPIPE_* names it is given
}

// check reports every flag or variable the CLI does not know, and returns
// the value of --http (or MEDPIPE_HTTP) for port checks.
func (inv invocation) check(t *testing.T) {
	t.Helper()
	if len(inv.args) == 0 {
		t.Errorf("%s: medpipe without a subcommand", inv.where)
		return
	}
	f := help(t, inv.args[0])
	for _, a := range inv.args[1:] {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !f.flags[name] {
			t.Errorf("%s: medpipe %s has no flag --%s", inv.where, inv.args[0], name)
		}
	}
	for _, e := range inv.env {
		if !f.envs[e] {
			t.Errorf("%s: medpipe %s reads no variable %s", inv.where, inv.args[0], e)
		}
	}
}

// flagValue returns the value of --name in args, "" when absent.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func readYAMLDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
}

func strs(v any) []string {
	l, _ := v.([]any)
	var out []string
	for _, x := range l {
		out = append(out, fmt.Sprint(x))
	}
	return out
}

func m(v any) map[string]any { x, _ := v.(map[string]any); return x }

// TestComposeFiles: both compose files parse; every medpipe service runs a
// real subcommand with real flags and variables, is built from
// deploy/Dockerfile, and is health-checked with `medpipe healthcheck` on its
// --http port; every other image is pinned; every volume, secret and
// dependency named is declared.
func TestComposeFiles(t *testing.T) {
	for _, file := range []string{"compose.yaml", "compose.minimal.yaml"} {
		t.Run(file, func(t *testing.T) {
			docs := readYAMLDocs(t, file)
			if len(docs) != 1 {
				t.Fatalf("%d documents", len(docs))
			}
			c := docs[0]
			services := m(c["services"])
			if len(services) == 0 {
				t.Fatal("no services")
			}
			volumes, secrets := m(c["volumes"]), m(c["secrets"])
			medpipes := 0
			for name, sv := range services {
				s := m(sv)
				where := file + ": " + name
				image := fmt.Sprint(s["image"])
				if b := m(s["build"]); b != nil {
					if df := fmt.Sprint(b["dockerfile"]); df != "<nil>" {
						if _, err := os.Stat(filepath.Join(filepath.Dir(file), fmt.Sprint(b["context"]), df)); err != nil {
							t.Errorf("%s: build file: %v", where, err)
						}
					}
				} else if sb, ok := s["build"].(string); ok {
					if _, err := os.Stat(filepath.Join(sb, "Dockerfile")); err != nil {
						t.Errorf("%s: build %s: %v", where, sb, err)
					}
				}
				if strings.HasPrefix(image, "medpipe/medpipe") {
					medpipes++
					env := []string{}
					for k := range m(s["environment"]) {
						env = append(env, k)
					}
					args := strs(s["command"])
					inv := invocation{where: where, args: args, env: env}
					inv.check(t)
					hc := strs(m(s["healthcheck"])["test"])
					if m(s["healthcheck"])["disable"] == true || len(args) > 0 && args[0] == "keys" {
						continue
					}
					httpAddr := flagValue(args, "http")
					if httpAddr == "" {
						httpAddr = fmt.Sprint(m(s["environment"])["MEDPIPE_HTTP"])
					}
					if !slices.Contains(hc, "healthcheck") || !strings.HasSuffix(flagValue(hc, "http"), portOf(httpAddr)) {
						t.Errorf("%s: health check %v does not ask `medpipe healthcheck` on the --http port %q", where, hc, httpAddr)
					}
					continue
				}
				if image != "<nil>" && (!strings.Contains(image, ":") || strings.HasSuffix(image, ":latest")) {
					t.Errorf("%s: image %s is not pinned", where, image)
				}
				for _, v := range strs(s["volumes"]) {
					src, _, _ := strings.Cut(v, ":")
					if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
						if _, ok := volumes[src]; !ok {
							t.Errorf("%s: volume %s not declared", where, src)
						}
					} else if _, err := os.Stat(src); err != nil {
						t.Errorf("%s: %v", where, err)
					}
				}
			}
			for name, sv := range services {
				s := m(sv)
				for _, sec := range strs(s["secrets"]) {
					if _, ok := secrets[sec]; !ok {
						t.Errorf("%s: %s: secret %s not declared", file, name, sec)
					}
				}
				deps := strs(s["depends_on"])
				for d := range m(s["depends_on"]) {
					deps = append(deps, d)
				}
				for _, d := range deps {
					if _, ok := services[d]; !ok {
						t.Errorf("%s: %s depends on unknown service %s", file, name, d)
					}
				}
			}
			if medpipes == 0 {
				t.Fatal("no medpipe service")
			}
		})
	}
}

func portOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i:]
	}
	return addr
}

// TestSystemdUnits: each unit parses as sections of key=value lines, runs
// medpipe (or nats-server) with real flags, and its environment files hold
// real variables.
func TestSystemdUnits(t *testing.T) {
	envFile := regexp.MustCompile(`(?m)^EnvironmentFile=-?/etc/medpipe/(\S+)$`)
	units, _ := filepath.Glob(filepath.Join("systemd", "*.service"))
	if len(units) < 3 {
		t.Fatalf("units: %v", units)
	}
	for _, u := range units {
		sections := map[string]map[string]string{}
		f, err := os.Open(u)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		var section string
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			switch {
			case line == "" || strings.HasPrefix(line, "#"):
			case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
				section = line[1 : len(line)-1]
				sections[section] = map[string]string{}
			case strings.Contains(line, "=") && section != "":
				k, v, _ := strings.Cut(line, "=")
				sections[section][k] = v
			default:
				t.Errorf("%s:%d: not a unit line: %q", u, n, line)
			}
		}
		f.Close()
		for _, s := range []string{"Unit", "Service", "Install"} {
			if sections[s] == nil {
				t.Errorf("%s: no [%s] section", u, s)
			}
		}
		exec := strings.Fields(sections["Service"]["ExecStart"])
		if slices.Contains(exec, "/usr/bin/nats-server") {
			continue // medpipe-nats.service
		}
		if len(exec) < 2 || filepath.Base(exec[0]) != "medpipe" {
			t.Errorf("%s: ExecStart %q does not run medpipe", u, exec)
			continue
		}
		// The variables of the environment files it reads that are shipped
		// (decrypt-%i.env as decrypt-1.env).
		unit, _ := os.ReadFile(u)
		var env []string
		for _, ef := range envFile.FindAllStringSubmatch(string(unit), -1) {
			if p := filepath.Join("systemd", strings.ReplaceAll(ef[1], "%i", "1")); fileExists(p) {
				env = append(env, readEnvFile(t, p)...)
			}
		}
		(invocation{where: u, args: exec[1:], env: env}).check(t)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func readEnvFile(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.SplitSeq(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s: %q is not NAME=value", path, line)
		}
		names = append(names, k)
	}
	return names
}

// TestDockerfile: a multi-stage build of a static binary onto a pinned,
// minimal, non-root base whose entry point is medpipe, cross-compiled on the
// build platform for every target platform (multi-arch with buildx).
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	froms := regexp.MustCompile(`(?m)^FROM (?:--\S+ )*(\S+)`).FindAllStringSubmatch(s, -1)
	if len(froms) < 2 {
		t.Fatalf("not multi-stage: %v", froms)
	}
	for _, f := range froms {
		if !strings.Contains(f[1], ":") || strings.HasSuffix(f[1], ":latest") {
			t.Errorf("base image %s not pinned", f[1])
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "USER 65532:65532", "--chown=65532:65532", `ENTRYPOINT ["/usr/local/bin/medpipe"]`, "distroless/static",
		"FROM --platform=$BUILDPLATFORM ", "GOARCH=$TARGETARCH", "GOARM=${TARGETVARIANT#v}", "-X main.version=${VERSION}"} {
		if !strings.Contains(s, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	up := regexp.MustCompile(`CMD \[(.*)\]`).FindStringSubmatch(s)
	var args []string
	if up != nil && json.Unmarshal([]byte("["+up[1]+"]"), &args) == nil {
		(invocation{where: "Dockerfile CMD", args: args}).check(t)
	} else {
		t.Error("Dockerfile has no CMD in exec form")
	}
}

// TestNodeREDFiles: package.json pins exact versions of Node-RED and the
// FlowFuse dashboard; flows.json parses, every reference between nodes
// resolves, and the broker comes from the environment.
func TestNodeREDFiles(t *testing.T) {
	var pkg struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	b, err := os.ReadFile(filepath.Join("node-red", "package.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &pkg); err != nil {
		t.Fatal(err)
	}
	for _, dep := range []string{"node-red", "@flowfuse/node-red-dashboard"} {
		v := pkg.Dependencies[dep]
		if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(v) {
			t.Errorf("%s version %q is not pinned exactly", dep, v)
		}
	}
	if _, ok := pkg.Dependencies["node-red-dashboard"]; ok {
		t.Error("the deprecated node-red-dashboard is a dependency")
	}
	var nodes []map[string]any
	b, err = os.ReadFile(filepath.Join("node-red", "flows.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &nodes); err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, n := range nodes {
		ids[fmt.Sprint(n["id"])] = fmt.Sprint(n["type"])
	}
	types := map[string]int{}
	for _, n := range nodes {
		types[fmt.Sprint(n["type"])]++
		for _, ref := range []string{"group", "page", "ui", "theme", "broker", "z"} {
			if v, ok := n[ref].(string); ok && v != "" && n["type"] != "mqtt-broker" {
				if _, found := ids[v]; !found {
					t.Errorf("node %v: %s %q does not exist", n["id"], ref, v)
				}
			}
		}
		ws, _ := n["wires"].([]any)
		for _, w := range ws {
			for _, to := range w.([]any) {
				if _, found := ids[fmt.Sprint(to)]; !found {
					t.Errorf("node %v wired to missing %v", n["id"], to)
				}
			}
		}
		if n["type"] == "mqtt-broker" && (n["broker"] != "${MQTT_HOST}" || n["port"] != "${MQTT_PORT}") {
			t.Errorf("broker %v:%v is not taken from the environment", n["broker"], n["port"])
		}
	}
	for _, want := range []string{"ui-gauge", "ui-chart", "ui-dropdown", "ui-table", "ui-notification", "ui-template", "ui-control", "mqtt in", "http in"} {
		if types[want] == 0 {
			t.Errorf("flows.json has no %s node", want)
		}
	}
	// Narrow subscriptions: every topic a node subscribes to, statically or
	// in the connect function's list, is one leaf with + for the device.
	var topics []string
	for _, n := range nodes {
		if n["type"] == "mqtt in" && n["topic"] != "" {
			topics = append(topics, fmt.Sprint(n["topic"]))
		}
		if f, _ := n["func"].(string); strings.Contains(f, `action: "subscribe"`) {
			for _, m := range regexp.MustCompile(`(?m)^\s*"([^"]+)",$`).FindAllStringSubmatch(f, -1) {
				topics = append(topics, "Pico/+/"+m[1])
			}
		}
	}
	if len(topics) < 5 {
		t.Errorf("flows.json subscribes to %v: the dashboard's leaves are missing", topics)
	}
	for _, tp := range topics {
		if strings.Contains(tp, "#") || !strings.HasPrefix(tp, "Pico/+/") {
			t.Errorf("flows.json subscribes to %q: want Pico/+/<leaf>, never #", tp)
		}
	}
	// Per-screen scoping: the patient widgets honour msg._client.
	base := map[string]any{}
	for _, n := range nodes {
		if n["type"] == "ui-base" {
			base = n
		}
	}
	scoped := fmt.Sprint(base["acceptsClientConfig"])
	for _, typ := range []string{"ui-chart", "ui-gauge", "ui-text", "ui-template", "ui-dropdown"} {
		if !strings.Contains(scoped, typ) {
			t.Errorf("ui-base does not scope %s to a client (acceptsClientConfig %s)", typ, scoped)
		}
	}
	if base["includeClientData"] != true {
		t.Error("ui-base does not include client data (includeClientData)")
	}
	// History and alerts survive a restart: the file context store.
	b, err = os.ReadFile(filepath.Join("node-red", "settings.js"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`file:\s*\{\s*module:\s*"localfilesystem"`).Match(b) {
		t.Error(`settings.js has no "file" context store (localfilesystem)`)
	}
}
