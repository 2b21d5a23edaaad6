package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// envName is the environment variable that backs a flag: --mqtt-url → MEDPIPE_MQTT_URL.
func envName(flagName string) string {
	return "MEDPIPE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// newFlagSet returns a flag set whose usage lists every flag, grouped by
// purpose (flagGroups), with its environment variable. Every command has
// --config.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.String(configFlagName, "", "YAML config `file` whose keys are flag names (medpipe config example prints one); flags and MEDPIPE_* override it")
	fs.Usage = func() {
		stderr := fs.Output()
		fmt.Fprintf(stderr, "Usage: medpipe %s [flags]\n\n%s\n\nFlags (each also read from the environment variable shown, then from the --config file):\n", name, synopsis)
		for _, g := range groupFlags(fs) {
			fmt.Fprintf(stderr, "\n%s:\n", g.title)
			for _, f := range g.flags {
				typ, usage := flag.UnquoteUsage(f)
				fmt.Fprintf(stderr, "  --%s %s\n    \t%s", f.Name, typ, strings.ReplaceAll(usage, "\n", "\n    \t"))
				if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s" {
					fmt.Fprintf(stderr, " (default %s)", f.DefValue)
				}
				fmt.Fprintf(stderr, " [%s]\n", envName(f.Name))
			}
		}
	}
	return fs
}

// flagGroup is a purpose flags serve: help, the example config file and
// shell completion show flags under these headings, in this order.
type flagGroup struct {
	title    string
	names    []string // flags in the group by name (checked before any prefix)
	prefixes []string // and by prefix
}

// flagGroups sorts every command's flags by purpose; a flag in none is
// the command's own ("Command").
var flagGroups = []flagGroup{
	{title: "General", names: []string{configFlagName, "log-format", "log-level"}},
	{title: "Admin endpoint", names: []string{"http", "pprof", "status-every"}},
	{title: "Embedded servers (up)", names: []string{"data-dir", "host", "nats-port", "mqtt-port", "monitor-port"}},
	{title: "NATS", names: []string{"nats"}, prefixes: []string{"nats-"}},
	{title: "Streams", names: []string{"partitions", "replicas", "raw-max-age", "raw-max-bytes", "readings-max-age", "duplicate-window", "stream-compression"}},
	{title: "Device edge", names: []string{"listen", "tls-listen", "tls-ca", "tls-cert", "tls-key", "proxy-protocol-from", "idle-gap", "idle-timeout", "first-frame-timeout", "frame-timeout", "max-legacy-blocks"}},
	{title: "Limits", names: []string{"ingest-in-flight", "decrypt-in-flight", "publish-in-flight", "raw-batch", "raw-linger", "readings-batch"}, prefixes: []string{"max-", "accept-", "penalty"}},
	{title: "Device keys", names: []string{"keys", "archive-key-file"}},
	{title: "MQTT", names: []string{"sink", "mqtt", "prefix", "qos", "retain", "json-only", "json-topic", "address-every"}, prefixes: []string{"mqtt-"}},
	{title: "Webhook sink", prefixes: []string{"webhook-"}},
	{title: "Simulated devices", names: []string{"simulate", "rate", "variant", "protocol", "devices", "server", "mix", "id", "seed", "count", "duration", "ramp", "fever-per-hour", "missing-sensor", "interactive", "json", "keys-out"}},
}

// Titles of the groups outside flagGroups.
const (
	groupCommand    = "Command"
	groupDeprecated = "Deprecated"
)

// groupOf is the title of flag f's group.
func groupOf(f *flag.Flag) string {
	if strings.HasPrefix(f.Usage, "deprecated: use --") {
		return groupDeprecated
	}
	for _, g := range flagGroups {
		if slices.Contains(g.names, f.Name) {
			return g.title
		}
	}
	for _, g := range flagGroups {
		for _, p := range g.prefixes {
			if strings.HasPrefix(f.Name, p) {
				return g.title
			}
		}
	}
	return groupCommand
}

// groupedFlags is one group's flags, alphabetical.
type groupedFlags struct {
	title string
	flags []*flag.Flag
}

// groupFlags returns fs's flags by group, in flagGroups' order, the
// command's own flags after them and deprecated spellings last; groups
// with no flag are left out.
func groupFlags(fs *flag.FlagSet) []groupedFlags {
	by := map[string][]*flag.Flag{}
	fs.VisitAll(func(f *flag.Flag) { by[groupOf(f)] = append(by[groupOf(f)], f) })
	var out []groupedFlags
	for _, t := range groupTitles() {
		if len(by[t]) > 0 {
			out = append(out, groupedFlags{t, by[t]})
		}
	}
	return out
}

// groupTitles lists every group title in order.
func groupTitles() []string {
	var out []string
	for _, g := range flagGroups {
		out = append(out, g.title)
	}
	return append(out, groupCommand, groupDeprecated)
}

// parseFlags parses args, which must be flags only, then fills every flag
// not given on the command line from its MEDPIPE_* environment variable.
func parseFlags(fs *flag.FlagSet, args []string) error {
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr(fmt.Errorf("%s: unexpected argument %q", fs.Name(), pos[0]))
	}
	return nil
}

// parseArgs parses flags given anywhere among the arguments, before or
// after positional ones (medpipe keys import fleet.jsonl --nats URL, as the
// nats CLI and kubectl accept), and returns the positional arguments in
// order; everything after "--" is positional. Then it fills every flag not
// given on the command line from its MEDPIPE_* environment variable.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	pos, err := parseArgsOnly(fs, args)
	return pos, usageErr(err)
}

func parseArgsOnly(fs *flag.FlagSet, args []string) ([]string, error) {
	if len(args) == 1 && args[0] == describeArg {
		return nil, &describedFlags{fs}
	}
	aliasDeprecated(fs)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg, err := configOf(fs, set)
	if err != nil {
		return nil, err
	}
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if now, ok := deprecatedFlags[f.Name]; ok {
			if _, newInEnv := os.LookupEnv(envName(now)); set[now] || newInEnv {
				return // the new spelling wins
			}
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			// fs.Set, not f.Value.Set: a flag set from the environment or the
			// config file counts as given (fs.Visit), like one on the
			// command line: it is an operator's choice, not a default.
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", envName(f.Name), e)
			}
			return
		}
		if cfg != nil && f.Name != configFlagName {
			_, err = cfg.apply(fs, f)
		}
	})
	if err == nil {
		err = warnDeprecated(fs, set)
	}
	return pos, err
}

// configOf loads the config file named by --config (given) or
// MEDPIPE_CONFIG; nil when neither names one.
func configOf(fs *flag.FlagSet, given map[string]bool) (*configFile, error) {
	f := fs.Lookup(configFlagName)
	if f == nil {
		return nil, nil
	}
	path := f.Value.String()
	if !given[configFlagName] {
		path = os.Getenv(envName(configFlagName))
		_ = f.Value.Set(path)
	}
	if path == "" {
		return nil, nil
	}
	return loadConfig(path)
}

// deprecatedFlags maps old flag spellings to the flag that replaced them.
// The old ones still work (on the command line and as MEDPIPE_*), with a
// warning, so that scripts and unit files keep running.
// Work in flight is spelled --<stage>-in-flight everywhere, the same in a
// stage's own command and in up, which has all three.
var deprecatedFlags = map[string]string{
	"max-pending-frames": "ingest-in-flight",
	"max-inflight":       "decrypt-in-flight",
	"publish-inflight":   "publish-in-flight",
}

// aliasDeprecated registers every deprecated spelling of a flag fs has.
func aliasDeprecated(fs *flag.FlagSet) {
	for old, now := range deprecatedFlags {
		if f := fs.Lookup(now); f != nil && fs.Lookup(old) == nil {
			fs.Var(f.Value, old, "deprecated: use --"+now)
		}
	}
}

// deprecationOut is where deprecation warnings go (standard error).
var deprecationOut io.Writer = os.Stderr

// warnDeprecated warns about every deprecated spelling used, on the command
// line or in the environment, and refuses a conflict with the new one.
func warnDeprecated(fs *flag.FlagSet, set map[string]bool) error {
	for old, now := range deprecatedFlags {
		if fs.Lookup(old) == nil || fs.Lookup(old).Usage != "deprecated: use --"+now {
			continue
		}
		_, inEnv := os.LookupEnv(envName(old))
		if !set[old] && !inEnv {
			continue
		}
		if set[old] && set[now] {
			return fmt.Errorf("--%s is the deprecated spelling of --%s: give one of them", old, now)
		}
		fmt.Fprintf(deprecationOut, "medpipe: warning: --%s (%s) is deprecated; use --%s (%s)\n", old, envName(old), now, envName(now))
	}
	return nil
}

// subcommandFirst moves the first argument that names one of subs to the
// front, so that flags may come before a subcommand too
// (medpipe archive --nats URL export …). An argument that is a flag's value
// can be mistaken for the subcommand only when it spells one exactly.
func subcommandFirst(args []string, subs ...string) []string {
	for i, a := range args {
		if a == "--" {
			break
		}
		if slices.Contains(subs, a) {
			out := append([]string{a}, args[:i]...)
			return append(out, args[i+1:]...)
		}
	}
	return args
}
