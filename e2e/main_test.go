package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/ingest"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// batched is --readings-batch for the decrypt processes, and rawBatched
// --raw-batch for the ingest processes, of the fault tests (stage kills,
// failover, a cluster's leader lost): they prove batches of readings and
// of frames lose nothing; the other tests run the stages' defaults, a
// message a reading and a frame.
var (
	batched    = strconv.Itoa(decrypt.DefaultReadingsBatch)
	rawBatched = strconv.Itoa(ingest.DefaultRawBatch)
)

func TestMain(m *testing.M) {
	code := m.Run()
	testkit.RemoveBuilt()
	os.Exit(code)
}

// run runs the medpipe binary to completion, the way a user runs a command.
// Cancelling ctx interrupts it (SIGINT), as Ctrl-C would. The error carries
// the command's last line of standard error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	bin, err := testkit.BuildMedpipe()
	if err != nil {
		return err
	}
	var errOut testkit.SyncBuffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = stdout, io.MultiWriter(stderr, &errOut)
	if stdout == stderr { // one writer, written by one goroutine
		cmd.Stdout = cmd.Stderr
	}
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	// An interrupted command that drains and exits 0 has not failed.
	if err := cmd.Run(); err != nil && !(cmd.ProcessState != nil && cmd.ProcessState.Success()) {
		return fmt.Errorf("medpipe %s: %w: %s", args[0], err, lastLines(errOut.String(), 1))
	}
	return nil
}

// simulated waits for a `medpipe simulate --json` process to finish
// cleanly and returns its summary.
func simulated(ctx context.Context, t *testing.T, p *testkit.Proc) simSummary {
	t.Helper()
	if err := p.Wait(ctx, t); err != nil {
		t.Fatalf("simulate: %v", err)
	}
	return parseSimSummary(t, p.Out.String())
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
func startServing(ctx context.Context, t *testing.T, name string, env []string, args ...string) (*testkit.Proc, string) {
	t.Helper()
	p := testkit.StartMedpipe(t, name, env, append(args, "--http", "127.0.0.1:0")...)
	var addr string
	testkit.CheckFor(t, time.Until(deadline(ctx)), 20*time.Millisecond, func() error {
		select {
		case <-p.Exited():
			t.Fatalf("%s exited before serving: %v", name, p.Err())
		default:
		}
		m := servingAddr.FindStringSubmatch(p.Out.String())
		if m == nil {
			return fmt.Errorf("%s gave no start-up line", name)
		}
		addr = m[1]
		return healthy(addr)
	})
	return p, addr
}

// deadline is ctx's deadline, or a minute from now.
func deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(time.Minute)
}

// servingAddr finds the --http address in a stage's start-up line.
var servingAddr = regexp.MustCompile(`\bhttp=(127\.0\.0\.1:[0-9]+)`)

// healthy is nil when addr's /readyz answers 200.
func healthy(addr string) error {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s/readyz: %s", addr, resp.Status)
	}
	return nil
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
	c := &stageCluster{t: t, ctx: ctx, srv: testkit.StartBus(t, 0).Server, keys: filepath.Join(t.TempDir(), "keys.jsonl"), edge: testkit.FreeAddr(t)}
	c.env = []string{"MEDPIPE_NATS=" + c.srv.ClientURL(), "MEDPIPE_PARTITIONS=" + strconv.Itoa(partitions)}
	var err error
	if c.devs, err = simulator.LoadOrCreateKeys(c.keys, devices, prefix); err != nil {
		t.Fatal(err)
	}
	return c
}

// start runs a stage process (see startServing) and waits until its
// /healthz answers.
func (c *stageCluster) start(name string, args ...string) *testkit.Proc {
	c.t.Helper()
	p, _ := startServing(c.ctx, c.t, name, c.env, args...)
	return p
}

// collector subscribes to filter on the cluster's MQTT listener.
func (c *stageCluster) collector(filter, clientID string) *testkit.Collector {
	c.t.Helper()
	return testkit.NewCollector(c.t, testkit.CollectorOptions{URL: c.srv.MQTTURL(), Filter: filter, QoS: 1, ClientID: clientID, CleanSession: true})
}
