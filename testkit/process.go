package testkit

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// MedpipeBinary builds the medpipe CLI once per test binary (from the
// workspace, so from any module's tests) and returns its path. Call
// RemoveBuilt from TestMain to delete it.
func MedpipeBinary(t testing.TB) string {
	t.Helper()
	path, err := BuildMedpipe()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// BuildMedpipe is MedpipeBinary for callers without a testing.TB.
func BuildMedpipe() (string, error) {
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "medpipe-test-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "medpipe")
		if out, err := exec.Command("go", "build", "-o", binPath, "github.com/medpipe/medpipe/cmd/medpipe").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build medpipe: %v\n%s", err, out)
		}
	})
	return binPath, binErr
}

// RemoveBuilt deletes what MedpipeBinary built.
func RemoveBuilt() {
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
}

// Proc is a process started by a test.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	// Out is the process's standard output and error, interleaved.
	Out    *SyncBuffer
	exited chan struct{}
	err    error
}

// StartProcess runs prog until the test ends (SIGTERM, then SIGKILL after
// 10 s) and shows its output when the test fails.
func StartProcess(t testing.TB, name string, env []string, prog string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &Proc{Name: name, Cmd: cmd, Out: &SyncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Out, p.Out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("--- output of %s:\n%s", name, p.Out.String())
		}
	})
	return p
}

// StartMedpipe runs the medpipe binary (see MedpipeBinary) with args.
func StartMedpipe(t testing.TB, name string, env []string, args ...string) *Proc {
	t.Helper()
	return StartProcess(t, name, env, MedpipeBinary(t), args...)
}

// Exited is closed when the process has exited; Err is then its exit error.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit error, once Exited is closed.
func (p *Proc) Err() error {
	<-p.exited
	return p.err
}

// Kill kills the process (SIGKILL) and waits for it.
func (p *Proc) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.exited
}

// Stop sends SIGINT and fails the test unless the process exits cleanly
// within the given time.
func (p *Proc) Stop(t testing.TB, within time.Duration) {
	t.Helper()
	_ = p.Cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("%s exited with %v", p.Name, p.err)
		}
	case <-time.After(within):
		t.Errorf("%s did not stop within %v", p.Name, within)
	}
}

// Wait waits for the process to exit, failing the test when ctx ends first.
func (p *Proc) Wait(ctx context.Context, t testing.TB) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-ctx.Done():
		t.Fatalf("%s did not exit: %v", p.Name, ctx.Err())
		return nil
	}
}
