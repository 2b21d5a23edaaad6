package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/wire"
)

const keysSynopsis = `The device registry in JetStream KV (bucket ` + registry.Bucket + `), the source of truth for keys
when running against NATS. Subcommands:
  import FILE   load today's JSON-lines keys file (idempotent; reports added / changed / unchanged)
  add ID        register a device with a random key and IV, printed once (or written with --config-out)
  list          ids, created, rotated, revoked (secrets only with --show-secrets)
  rotate ID     give a device a new random key and IV (printed once, or --config-out)
  revoke ID     refuse the device's frames from now on (they go to DEADLETTER as revoked)
  export        print every device as a JSON-lines keys file (contains secrets)
Flags go anywhere: medpipe keys import fleet.jsonl --nats URL`

func runKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keys", keysSynopsis, stderr)
	var (
		nf          natsFlags
		replicas    int
		showSecrets bool
		configOut   string
		lf          logFlags
	)
	lf.register(fs)
	nf.registerConn(fs)
	fs.IntVar(&replicas, "replicas", 1, "replicas of the registry bucket when it is created")
	fs.BoolVar(&showSecrets, "show-secrets", false, "list: include keys and IVs")
	fs.StringVar(&configOut, "config-out", "", "add/rotate: write the device's keys line to this file (mode 0600) instead of printing it")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		fs.Usage()
		return errors.New("keys: no subcommand")
	}
	sub, arg := rest[0], ""
	need := map[string]bool{"import": true, "add": true, "rotate": true, "revoke": true}
	if need[sub] {
		if len(rest) != 2 {
			return fmt.Errorf("keys %s: want exactly one argument", sub)
		}
		arg = rest[1]
	} else if len(rest) != 1 {
		return fmt.Errorf("keys %s: unexpected argument %q", sub, rest[1])
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	var devs []wire.Device
	if sub == "import" {
		if devs, err = decrypt.ReadKeysFile(arg, log); err != nil {
			return err
		}
	}

	nc, js, err := bus.Connect(ctx, nf.conn("medpipe-keys", log))
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	reg, err := registry.Open(ctx, js, replicas)
	if err != nil {
		return err
	}

	switch sub {
	case "import":
		rep, err := reg.Import(ctx, devs)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added %d, changed %d, unchanged %d\n", len(rep.Added), len(rep.Changed), len(rep.Unchanged))
		for _, l := range []struct {
			what string
			ids  []string
		}{{"added", rep.Added}, {"changed", rep.Changed}} {
			for _, id := range l.ids {
				fmt.Fprintf(stdout, "  %s %s\n", l.what, id)
			}
		}
		return nil
	case "add", "rotate":
		var r registry.Record
		if sub == "add" {
			r, err = reg.Add(ctx, arg)
		} else {
			r, err = reg.Rotate(ctx, arg)
		}
		if err != nil {
			return err
		}
		line := wire.AppendKeyLine(nil, r.Device())
		if configOut != "" {
			if err := os.WriteFile(configOut, line, 0o600); err != nil {
				return fmt.Errorf("--config-out: %w", err)
			}
			fmt.Fprintf(stdout, "%s %s: keys written to %s\n", sub, r.ID, configOut)
			return nil
		}
		fmt.Fprintf(stderr, "Store this line now: it is shown once.\n")
		_, err = stdout.Write(line)
		return err
	case "revoke":
		r, err := reg.Revoke(ctx, arg)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked %s at %s\n", r.ID, r.Revoked.Format(time.RFC3339))
		return nil
	case "list":
		recs, err := reg.List(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		head := "ID\tCREATED\tROTATED\tREVOKED"
		if showSecrets {
			head += "\tKEY\tIV"
		}
		fmt.Fprintln(tw, head)
		for _, r := range recs {
			row := fmt.Sprintf("%s\t%s\t%s\t%s", r.ID, stamp(r.Created), stamp(r.Rotated), stamp(r.Revoked))
			if showSecrets {
				row += "\t" + r.Key + "\t" + r.IV
			}
			fmt.Fprintln(tw, row)
		}
		return tw.Flush()
	case "export":
		recs, err := reg.List(ctx)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if r.IsRevoked() {
				continue
			}
			if _, err := stdout.Write(wire.AppendKeyLine(nil, r.Device())); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("keys: unknown subcommand %q", sub)
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}
