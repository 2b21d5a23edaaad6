package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// medpipeBinary builds the medpipe command once per test run.
func medpipeBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "medpipe-bin-"); buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "medpipe")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is a medpipe process started by a test.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *testkit.SyncBuffer
	done chan error
}

// startProc runs the medpipe binary with args; the process is killed at
// cleanup if still running, and its output is logged when the test fails.
func startProc(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(medpipeBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{name: name, cmd: cmd, out: &testkit.SyncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("--- output of %s:\n%s", name, p.out.String())
		}
	})
	return p
}

// simulated waits for a `medpipe simulate --json` process to finish
// cleanly and returns its summary.
func (p *proc) simulated(ctx context.Context, t *testing.T) simSummary {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for cleanup
		if err != nil {
			t.Fatalf("simulate: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("simulate did not finish")
	}
	return parseSimSummary(t, p.out.String())
}

// assertFewDuplicates fails when more than 0.5% of the readings arrived
// twice. Delivery is at least once: a quiet run has none (the figures in
// the README), but under CPU contention (CI running test packages side by
// side) an acknowledgement can come too late and a reading come again.
func assertFewDuplicates(t *testing.T, dups, total int) {
	t.Helper()
	if dups > 0 {
		t.Logf("%d of %d readings arrived twice", dups, total)
	}
	if dups > total/200 {
		t.Errorf("%d of %d readings arrived twice: more than redeliveries under load explain", dups, total)
	}
}

// assertInOrder fails for every device whose readings did not arrive as
// 1, 2, 3, …
func assertInOrder(t *testing.T, order map[string][]uint64) {
	t.Helper()
	for dev, seqs := range order {
		for i, s := range seqs {
			if s != uint64(i+1) {
				t.Errorf("%s: reading %d at position %d", dev, s, i+1)
				break
			}
		}
	}
}

// maxDisplacement bounds how far from its place a reading may arrive after a
// stage is killed (a pull batch): readings in flight at the kill come again
// after a few newer ones that had already gone through.
const maxDisplacement = 32

// assertDisplacement checks that every device's readings arrived at most
// bound places from where they belong, and reports how many devices had any
// out of place and the largest displacement seen.
func assertDisplacement(t *testing.T, order map[string][]uint64, bound int) (reordered, worst int) {
	t.Helper()
	for _, seqs := range order {
		moved := false
		for i, seq := range seqs {
			if off := int(seq) - (i + 1); off != 0 {
				moved = true
				worst = max(worst, off, -off)
			}
		}
		if moved {
			reordered++
		}
	}
	if worst > bound {
		t.Errorf("a reading arrived %d places from where it belongs (bound %d)", worst, bound)
	}
	return reordered, worst
}

// startServing runs a stage with /healthz on a port the stage picks itself
// (--http 127.0.0.1:0: a port picked beforehand can be taken by another
// test's process before the stage binds it) and waits until it is healthy.
// It returns the process and the address its start-up line gives.
func startServing(ctx context.Context, t *testing.T, name string, env []string, args ...string) (*proc, string) {
	t.Helper()
	p := startProc(t, name, env, append(args, "--http", "127.0.0.1:0")...)
	for {
		if m := servingAddr.FindStringSubmatch(p.out.String()); m != nil {
			waitHealthy(ctx, t, m[1])
			return p, m[1]
		}
		select {
		case err := <-p.done:
			p.done <- err // for cleanup
			t.Fatalf("%s exited before serving: %v", name, err)
		case <-ctx.Done():
			t.Fatalf("%s gave no start-up line", name)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// servingAddr finds the --http address in a stage's start-up line.
var servingAddr = regexp.MustCompile(`\bhttp=(127\.0\.0\.1:[0-9]+)`)

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T, within time.Duration) {
	t.Helper()
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-p.done:
		p.done <- err // for cleanup
		if err != nil {
			t.Errorf("%s exited with %v", p.name, err)
		}
	case <-time.After(within):
		t.Errorf("%s did not stop within %v", p.name, within)
	}
}

// waitHealthy polls a /healthz endpoint until it answers 200.
func waitHealthy(ctx context.Context, t *testing.T, addr string) {
	t.Helper()
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s/healthz not healthy: %v", addr, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// simSummary is the JSON line `medpipe simulate` prints at exit.
type simSummary struct{ Sent, Acked, Dropped, Reconnects, Errors uint64 }

// parseSimSummary finds the summary line in a simulate process's output.
func parseSimSummary(t *testing.T, out string) simSummary {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var s simSummary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil || !strings.Contains(lines[len(lines)-1], `"sent"`) {
		t.Fatalf("no summary at the end of simulate's output:\n%s", out)
	}
	return s
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestHelpListsEveryFlagWithItsEnvironmentVariable(t *testing.T) {
	for _, c := range commands {
		if c.name == "version" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			err := c.run(context.Background(), []string{"-h"}, &out, &out)
			if err == nil {
				t.Fatal("-h: want flag.ErrHelp")
			}
			help := out.String()
			// healthcheck is a container probe: it logs nothing, so it has no log flags.
			if c.name != "healthcheck" && (!strings.Contains(help, "--log-level") || !strings.Contains(help, "MEDPIPE_LOG_LEVEL")) {
				t.Fatalf("help lacks common flags:\n%s", help)
			}
			for _, line := range strings.Split(help, "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "--") && !strings.Contains(help, envName(strings.Fields(line)[0][2:])) {
					t.Errorf("flag %s has no environment variable in help", line)
				}
			}
		})
	}
}

func TestEnvironmentFallback(t *testing.T) {
	t.Setenv("MEDPIPE_LOG_FORMAT", "yaml")
	var out bytes.Buffer
	err := run(context.Background(), []string{"simulate", "--keys", filepath.Join(t.TempDir(), "k")}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "yaml") {
		t.Fatalf("MEDPIPE_LOG_FORMAT=yaml not applied: %v", err)
	}
	// A flag on the command line wins over the environment.
	err = run(context.Background(), []string{"simulate", "--log-format", "json", "--keys", filepath.Join(t.TempDir(), "k"), "--devices", "1", "--duration", "300ms", "--server", "127.0.0.1:1"}, &out, &out)
	if err != nil && strings.Contains(err.Error(), "yaml") {
		t.Fatalf("command line did not win: %v", err)
	}
}

// stageCluster is what the process tests share: a nats-server with MQTT for
// medpipe stage processes, a simulated fleet's keys file and the edge's address.
type stageCluster struct {
	t    *testing.T
	ctx  context.Context
	srv  *bus.Embedded
	env  []string
	keys string
	edge string
	devs []wire.Device
}

func newStageCluster(ctx context.Context, t *testing.T, partitions, devices int, prefix string) *stageCluster {
	t.Helper()
	c := &stageCluster{t: t, ctx: ctx, srv: testkit.StartBus(t, 0).Server, keys: filepath.Join(t.TempDir(), "keys.jsonl"), edge: freeAddr(t)}
	c.env = []string{"MEDPIPE_NATS=" + c.srv.ClientURL(), "MEDPIPE_PARTITIONS=" + strconv.Itoa(partitions)}
	var err error
	if c.devs, err = simulator.LoadOrCreateKeys(c.keys, devices, prefix); err != nil {
		t.Fatal(err)
	}
	return c
}

// start runs a stage process (see startServing) and waits until its
// /healthz answers.
func (c *stageCluster) start(name string, args ...string) *proc {
	c.t.Helper()
	p, _ := startServing(c.ctx, c.t, name, c.env, args...)
	return p
}

// collector subscribes to filter on the cluster's MQTT listener.
func (c *stageCluster) collector(filter, clientID string) *testkit.Collector {
	c.t.Helper()
	return testkit.NewCollector(c.t, testkit.CollectorOptions{URL: c.srv.MQTTURL(), Filter: filter, QoS: 1, ClientID: clientID, CleanSession: true})
}
