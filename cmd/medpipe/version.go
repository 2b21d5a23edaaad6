package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"runtime/debug"

	"github.com/medpipe/medpipe/ops"
)

// version and revision are set at build time with -ldflags
// "-X main.version=… -X main.revision=…" (scripts/release.sh): Go records
// no VCS settings in workspace mode.
var version, revision = "", ""

// buildInfo is the running binary's version and VCS revision. Without a
// stamped version it describes the build from what the Go toolchain
// recorded: the module version of `go install …@v1.2.3`, else
// devel-<revision>[-dirty] from the VCS, and "(devel)" only when the
// toolchain recorded neither.
func buildInfo() ops.Build {
	b := ops.Build{Version: version, Revision: revision}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if b.Version == "" {
			b.Version = "(devel)"
		}
		return b
	}
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = cmp.Or(b.Revision, s.Value)
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	switch {
	case b.Version != "":
	case bi.Main.Version != "" && bi.Main.Version != "(devel)":
		b.Version = bi.Main.Version
	case b.Revision != "":
		b.Version = "devel-" + b.Revision[:min(12, len(b.Revision))]
		if modified {
			b.Version += "-dirty"
		}
	default:
		b.Version = "(devel)"
	}
	return b
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "Print the version: the one stamped at build, else the VCS revision built.", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "medpipe", buildInfo().Version)
	return nil
}
