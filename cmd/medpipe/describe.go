package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"
)

// describeArg, as a command's only argument, makes parseArgs return the
// command's flag set (a describedFlags error) instead of parsing: the
// config file, its example and shell completion are derived from the very
// flag definitions the commands parse, with no second list to keep equal.
const describeArg = "\x00medpipe-describe-flags"

// describedFlags carries a command's flag set out of its run function.
type describedFlags struct{ fs *flag.FlagSet }

func (d *describedFlags) Error() string { return "flags of " + d.fs.Name() + " described" }

// subcommandsWithFlags lists the commands whose subcommands have flag sets
// of their own (each a section of the config file).
var subcommandsWithFlags = map[string][]string{"archive": {"export", "import", "verify"}}

// notConfigured are the commands the config file does not configure:
// version has no flags, bench is a measuring tool run by hand (and not in
// every build), config and completion work on the configuration itself.
var notConfigured = map[string]bool{"version": true, "bench": true, "config": true, "completion": true}

// commandFlags is one command's (or subcommand's) flag set; its name is
// the command path ("up", "archive export").
type commandFlags struct {
	path []string
	fs   *flag.FlagSet
}

// name is the command path as typed: "archive export".
func (c commandFlags) name() string { return strings.Join(c.path, " ") }

// describeCommand returns the flag set of the command at path.
func describeCommand(path []string) (*flag.FlagSet, bool) {
	for _, c := range commands {
		if c.name != path[0] {
			continue
		}
		args := append(append([]string{}, path[1:]...), describeArg)
		var d *describedFlags
		if err := c.run(context.Background(), args, io.Discard, io.Discard); errors.As(err, &d) {
			return d.fs, true
		}
	}
	return nil, false
}

// configuredCommands returns the flag sets of every command the config
// file configures, in the order of the command table.
func configuredCommands() []commandFlags {
	var out []commandFlags
	for _, c := range commands {
		if notConfigured[c.name] {
			continue
		}
		paths := [][]string{{c.name}}
		if subs, ok := subcommandsWithFlags[c.name]; ok {
			paths = paths[:0]
			for _, s := range subs {
				paths = append(paths, []string{c.name, s})
			}
		}
		for _, p := range paths {
			if fs, ok := describeCommand(p); ok {
				out = append(out, commandFlags{path: p, fs: fs})
			}
		}
	}
	return out
}
