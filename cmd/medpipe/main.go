// Command medpipe carries telemetry from wearable medical devices to MQTT.
//
//	device ──TCP──▶ ingest ──RAW──▶ decrypt ×N ──READINGS──▶ publish ──MQTT──▶ dashboards
//
// Run `medpipe up --simulate 100` for everything in one process on an
// embedded NATS server, or each stage on its own against external NATS and
// MQTT. `medpipe <command> -h` documents every flag; each flag also reads
// the environment variable MEDPIPE_<FLAG> (upper case, '-' as '_') and, below
// that, the YAML file named by --config (MEDPIPE_CONFIG).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// command is one medpipe subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands is set in init: the config file's validation reaches it through
// the commands' own flag parsing (describeCommand).
var commands []command

func init() {
	commands = []command{
		{"up", "run the whole pipeline in one process on an embedded NATS server with MQTT", runUp},
		{"ingest", "run the TCP edge: device frames → JetStream RAW", runIngest},
		{"decrypt", "run decrypt workers: RAW → READINGS (and DEADLETTER)", runDecrypt},
		{"publish", "run the MQTT bridge: READINGS → MQTT topics", runPublish},
		{"keys", "manage the device registry: import, add, list, rotate, revoke, export, audit", runKeys},
		{"streams", "create streams and change their limits (admin): apply, show", runStreams},
		{"simulate", "run simulated legacy devices against an ingest edge", runSimulate},
		{"replay", "replay stored frames (RAW or an archive) to MQTT under replay/, JSON lines or CSV", runReplay},
		{"archive", "export RAW to zstd archive files, import them back, verify them", runArchive},
		{"bench", "measure the pipeline with simulated devices against its own ceilings", runBench},
		{"config", "check a config file (validate FILE) or print a complete one (example)", runConfig},
		{"completion", "print shell completion for bash, zsh or fish", runCompletion},
		{"healthcheck", "exit 0 when a stage's /healthz answers ok (for container health checks)", runHealthcheck},
		{"version", "print the version", runVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if code := exitCode(err); code != 0 {
		fmt.Fprintln(os.Stderr, "medpipe:", err)
		os.Exit(code)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return usageErr(errors.New("no command given"))
		}
		return nil
	}
	if args[0] == "--version" || args[0] == "-version" {
		return runVersion(ctx, args[1:], stdout, stderr)
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	usage(stderr)
	return usageErr(fmt.Errorf("unknown command %q", args[0]))
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "medpipe carries telemetry from wearable medical devices to MQTT.\n\nUsage: medpipe <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun `medpipe <command> -h` for its flags. Every flag can also be set with MEDPIPE_<FLAG> in the environment\nor in a config file (--config FILE; medpipe config example prints one).\n")
	fmt.Fprintf(w, "`medpipe --version` prints the version. Exit codes: 0 ok, 1 failure while running, 2 usage or configuration error.\n")
}
