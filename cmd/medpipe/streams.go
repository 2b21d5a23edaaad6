package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/medpipe/medpipe/bus"
)

const streamsSynopsis = `medpipe's streams, their stages' durable consumers and KV buckets: an admin's action.
Stages only verify the streams (a stage whose flags contradict a stream logs a warning and keeps the
stream's limits), so changing a limit is done here. Subcommands:
  apply   create what is missing; on existing streams set the limits given as flags (retention,
          replicas, compression) and nothing else
  show    print each stream's limits and size
Against medpipe up, streams connects as admin with the password up generated (--nats-credentials-dir).`

func runStreams(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("streams", streamsSynopsis, stderr)
	var (
		nf natsFlags
		lf logFlags
	)
	lf.register(fs)
	nf.register(fs)
	nf.role = bus.RoleAdmin
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 || (rest[0] != "apply" && rest[0] != "show") {
		fs.Usage()
		return errors.New("streams: want one subcommand: apply or show")
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	nc, js, err := bus.Connect(ctx, nf.conn("medpipe-streams", log))
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if rest[0] == "apply" {
		parts, err := bus.ApplyStreams(ctx, js, nf.givenStreams())
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "applied: %d partitions\n", parts)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tMAX AGE\tMAX BYTES\tREPLICAS\tCOMPRESSION\tMESSAGES\tBYTES")
	for _, name := range []string{bus.StreamRaw, bus.StreamReadings, bus.StreamDeadLetter, bus.StreamAudit} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			fmt.Fprintf(tw, "%s\t(%v)\n", name, err)
			continue
		}
		i := s.CachedInfo()
		maxBytes := "-"
		if i.Config.MaxBytes > 0 {
			maxBytes = fmt.Sprint(i.Config.MaxBytes)
		}
		maxAge := "-"
		if i.Config.MaxAge > 0 {
			maxAge = i.Config.MaxAge.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\n", name, maxAge, maxBytes, i.Config.Replicas, i.Config.Compression, i.State.Msgs, i.State.Bytes)
	}
	return tw.Flush()
}
