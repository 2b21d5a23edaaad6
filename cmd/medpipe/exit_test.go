package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.jsonl")
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"help", []string{"up", "-h"}, 0},
		{"no command", nil, exitUsage},
		{"unknown command", []string{"frobnicate"}, exitUsage},
		{"unknown flag", []string{"up", "--no-such-flag"}, exitUsage},
		{"bad flag value", []string{"up", "--simulate", "many"}, exitUsage},
		{"bad log format", []string{"simulate", "--log-format", "yaml", "--keys", missing}, exitUsage},
		{"unexpected argument", []string{"healthcheck", "extra"}, exitUsage},
		{"missing keys file", []string{"decrypt", "--keys", missing, "--nats", "nats://127.0.0.1:1"}, exitUsage},
		{"runtime failure", []string{"healthcheck", "--http", "127.0.0.1:1", "--timeout", "1s"}, exitFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), tc.args, &out, &out)
			if got := exitCode(err); got != tc.want {
				t.Errorf("exit %d (err %v), want %d", got, err, tc.want)
			}
		})
	}
	if exitCode(errors.New("x")) != exitFailure {
		t.Error("a plain error is not a failure")
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		var out bytes.Buffer
		if err := run(context.Background(), args, &out, &out); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(out.String(), "medpipe ") || strings.Count(out.String(), "\n") != 1 {
			t.Errorf("%v: %q", args, out.String())
		}
	}
	old := version
	version = "9.8.7"
	defer func() { version = old }()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, &out, &out); err != nil || out.String() != "medpipe 9.8.7\n" {
		t.Errorf("stamped: %q, %v", out.String(), err)
	}
	if b := buildInfo(); b.Version != "9.8.7" {
		t.Errorf("build info %+v", b)
	}
}
