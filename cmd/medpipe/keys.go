package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/decrypt"
	"github.com/medpipe/medpipe/provision"
	"github.com/medpipe/medpipe/wire"
)

const keysSynopsis = `The device registry in JetStream KV (bucket ` + registry.Bucket + `), the source of truth for keys
when running against NATS. Subcommands:
  import FILE   load today's JSON-lines keys file (idempotent; reports added / changed / unchanged)
  add ID        register a device with a random key and IV, printed once (or written with --config-out);
                with --firmware-config FILE also write the wearable's factory block (serial, access point
                password, provisioning key; a .uf2 to copy onto the Pico, else a raw block for picotool)
  list          ids, created, rotated, revoked (secrets only with --show-secrets)
  rotate ID     give a device a new random key and IV (printed once, or --config-out)
  revoke ID     refuse the device's frames from now on (they go to DEADLETTER as revoked)
  export        print every device as a JSON-lines keys file (contains secrets)
  reset-mark ID forget a v2 device's sequence marks (a unit reflashed or replaced whose frames are refused as replayed)
  protocol ID v2|auto  pin a device to v2 (its legacy frames are refused as downgrade) or unpin it
  audit         who did which key operation on which device, with key fingerprints (never keys)
Every operation that changes or shows a key is recorded in the audit stream (` + bus.StreamAudit + `).
Against medpipe up, keys connects as admin with the password up generated (--nats-credentials-dir).
Flags go anywhere: medpipe keys import fleet.jsonl --nats URL`

func runKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keys", keysSynopsis, stderr)
	var (
		nf          natsFlags
		replicas    int
		showSecrets bool
		configOut   string
		auditFrom   uint64
		auditLimit  int
		fwConfig    string
		fwSerial    string
		lf          logFlags
	)
	lf.register(fs)
	nf.registerConn(fs)
	nf.role = bus.RoleAdmin
	fs.Uint64Var(&auditFrom, "from", 0, "audit: first entry (sequence number) to show")
	fs.IntVar(&auditLimit, "limit", 0, "audit: most entries to show (0: all)")
	fs.IntVar(&replicas, "replicas", bus.DefaultReplicas, "replicas of the registry bucket when it is created")
	fs.BoolVar(&showSecrets, "show-secrets", false, "list: include keys and IVs")
	fs.StringVar(&configOut, "config-out", "", "add/rotate: write the device's keys line to this file (mode 0600) instead of printing it")
	fs.StringVar(&fwConfig, "firmware-config", "", "add: write the device's firmware factory block to this file (mode 0600; .uf2 or raw)")
	fs.StringVar(&fwSerial, "firmware-serial", "", "add: the serial in the factory block (default: the device id, if at most 24 characters)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		fs.Usage()
		return errors.New("keys: no subcommand")
	}
	sub, arg := rest[0], ""
	need := map[string]bool{"import": true, "add": true, "rotate": true, "revoke": true, "reset-mark": true}
	var arg2 string
	if sub == "protocol" {
		if len(rest) != 3 {
			return errors.New("keys protocol: want a device id and v2 or auto")
		}
		arg, arg2 = rest[1], rest[2]
	} else if need[sub] {
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
	switch sub {
	case "reset-mark", "protocol":
		seqs, err := bus.OpenSeqStore(ctx, js, replicas)
		if err != nil {
			return err
		}
		if sub == "protocol" {
			if err := decrypt.SetProtocol(ctx, seqs, arg, arg2); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s: protocol %s\n", arg, arg2)
			return nil
		}
		if err := decrypt.ResetMarks(ctx, seqs, arg); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: marks reset\n", arg)
		return nil
	case "audit":
		entries, err := registry.Audit(ctx, js, auditFrom, auditLimit)
		if err != nil {
			return err
		}
		return registry.WriteAuditTable(stdout, entries)
	}
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
		_, err = rep.WriteTo(stdout)
		return err
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
		if sub == "add" && fwConfig != "" {
			if err := writeFirmwareConfig(fwConfig, fwSerial, r.ID, stdout); err != nil {
				return err
			}
		}
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
		var recs []registry.Record
		if showSecrets {
			recs, err = reg.Secrets(ctx, registry.ActionListSecrets, nil)
		} else {
			recs, err = reg.List(ctx)
		}
		if err != nil {
			return err
		}
		return registry.WriteTable(stdout, recs, showSecrets)
	case "export":
		recs, err := reg.Secrets(ctx, registry.ActionExport, func(r registry.Record) bool { return !r.IsRevoked() })
		if err != nil {
			return err
		}
		return registry.WriteKeys(stdout, recs)
	}
	return fmt.Errorf("keys: unknown subcommand %q", sub)
}

// writeFirmwareConfig writes a new factory block for device id to path and
// prints what goes on the device's label.
func writeFirmwareConfig(path, serial, id string, stdout io.Writer) error {
	f, err := provision.New(cmp.Or(serial, id), rand.Reader)
	if err != nil {
		return fmt.Errorf("--firmware-config: %w (set --firmware-serial)", err)
	}
	b, err := f.File(path)
	if err == nil {
		err = os.WriteFile(path, b, 0o600)
	}
	if err != nil {
		return fmt.Errorf("--firmware-config: %w", err)
	}
	return f.WriteLabel(stdout, id, path)
}
