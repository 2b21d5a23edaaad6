package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func TestHelpListsEveryFlagWithItsEnvironmentVariable(t *testing.T) {
	for _, c := range commands {
		if c.name == "version" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			err := c.run(context.Background(), []string{"-h"}, &out, &out)
			if c.name == "bench" && !benchLinked {
				// A production build answers with how to get the harness.
				if err == nil || !strings.Contains(err.Error(), "-tags bench") {
					t.Fatalf("bench without -tags bench: %v, want how to build it", err)
				}
				return
			}
			if err == nil {
				t.Fatal("-h: want flag.ErrHelp")
			}
			help := out.String()
			// healthcheck is a container probe: it logs nothing, so it has no
			// log flags; config and completion only print.
			if !notLogging[c.name] && (!strings.Contains(help, "--log-level") || !strings.Contains(help, "MEDPIPE_LOG_LEVEL")) {
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

// notLogging are the commands without log flags.
var notLogging = map[string]bool{"healthcheck": true, "config": true, "completion": true}

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
