package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/replay"
	"github.com/medpipe/medpipe/replay/archive"
	"github.com/medpipe/medpipe/stage"
)

const archiveSynopsis = `Archives of RAW: zstd files with every frame, its headers, sequence and time, and a manifest.
  export --out FILE [--since T] [--until T] [--seq FROM-TO]   write a range of RAW to FILE ('-': stdout)
  import FILE                                                    load FILE back into RAW (importing twice stores once)
  verify FILE                                                    check every record and the manifest
Flags go anywhere: medpipe archive export --out raw.mpa.zst --since -24h`

func runArchive(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	args = subcommandFirst(args, "export", "import", "verify")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(stderr, "Usage: medpipe archive export|import|verify [flags]\n\n%s\n\n", archiveSynopsis)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			// Each subcommand's flags, with their environment variables.
			_ = archiveExport(ctx, []string{"-h"}, stdout, stderr)
			fmt.Fprintln(stderr)
			_ = archiveImport(ctx, []string{"-h"}, stdout, stderr)
			return flag.ErrHelp
		}
		return errors.New("archive: want a subcommand: export, import or verify")
	}
	switch args[0] {
	case "export":
		return archiveExport(ctx, args[1:], stdout, stderr)
	case "import":
		return archiveImport(ctx, args[1:], stdout, stderr)
	case "verify":
		return archiveVerify(args[1:], stdout, stderr)
	}
	return fmt.Errorf("archive: unknown subcommand %q (want export, import or verify)", args[0])
}

func archiveExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("archive export", "Writes a time or sequence range of RAW, still encrypted, to an archive file (zstd, constant memory).", stderr)
	var (
		lf       logFlags
		nf       natsFlags
		sf       selectFlags
		out      string
		progress string
	)
	lf.register(fs)
	nf.registerConn(fs)
	sf.register(fs, false)
	fs.StringVar(&out, "out", "", "archive file to write ('-': standard output); written aside and renamed when complete")
	fs.StringVar(&progress, "progress", "auto", "progress bar on standard error: auto, on or off")
	keyFile := registerArchiveKey(fs, "seal (encrypt) the archive under the key in this file (at least 32 bytes of secret, e.g. head -c 32 /dev/urandom | base64); import, verify and replay --from-archive then need it")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if out == "" {
		return errors.New("archive export: --out FILE is required")
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	sel, err := sf.selection(time.Now())
	if err != nil {
		return err
	}
	show, err := progressOn(progress, stderr)
	if err != nil {
		return err
	}
	nf.role = bus.RoleReplay
	nc, js, err := bus.Connect(ctx, nf.conn("medpipe-archive", log))
	if err != nil {
		return err
	}
	defer nc.Close()
	src, err := replay.OpenRaw(ctx, js, bus.StreamRaw, sel)
	if err != nil {
		return err
	}
	defer src.Close()

	w, commit, abort, err := createAside(out, stdout)
	if err != nil {
		return err
	}
	var bar func(replay.Progress)
	if show {
		bar = progressBar(stderr)
	}
	bw := bufio.NewWriterSize(w, 256<<10)
	var dst io.Writer = bw
	var seal *archive.SealWriter
	if key, err := archiveKey(*keyFile); err != nil {
		abort()
		return err
	} else if key != nil {
		if seal, err = archive.NewSealWriter(bw, key); err != nil {
			abort()
			return err
		}
		dst = seal
	}
	m, err := replay.Export(ctx, src, sel, dst, bar)
	if err == nil && seal != nil {
		err = seal.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = commit()
	}
	if err != nil {
		abort()
		return err
	}
	fmt.Fprintf(stderr, "archive: %s\n", describeManifest(m))
	return nil
}

// createAside writes to path+".partial" and renames it on commit, so that
// an interrupted export leaves no file that looks complete.
func createAside(path string, stdout io.Writer) (w io.Writer, commit func() error, abort func(), err error) {
	if path == "-" {
		return stdout, func() error { return nil }, func() {}, nil
	}
	tmp := path + ".partial"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--out: %w", err)
	}
	commit = func() error {
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("--out: %w", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		return nil
	}
	abort = func() {
		f.Close()
		os.Remove(tmp)
	}
	return f, commit, abort, nil
}

func describeManifest(m archive.Manifest) string {
	if m.Frames == 0 {
		return fmt.Sprintf("stream %s, no frames", m.Stream)
	}
	return fmt.Sprintf("stream %s, %d frames, seq %d-%d, %s to %s, %d bytes of frames, sha256 %s",
		m.Stream, m.Frames, m.FirstSeq, m.LastSeq, m.FirstTime.Format(time.RFC3339), m.LastTime.Format(time.RFC3339), m.DataBytes, m.SHA256)
}

func archiveImport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("archive import", "Loads an archive back into RAW with the frames' headers, under "+replay.ImportSubject+" (replay and export read it, live decrypt does not). Frames already imported from the same origin (recorded in KV bucket "+replay.ImportBucket+"), or still in their origin stream, are skipped: importing twice stores once. The file is verified first (--no-verify skips that pass).", stderr)
	var (
		lf       logFlags
		nf       natsFlags
		noVerify bool
		original bool
		progress string
	)
	lf.register(fs)
	nf.register(fs)
	fs.BoolVar(&original, "original-subjects", false, "store frames under their original partition subjects, where live decrypt workers take them for new frames (legacy readings republished live); default: under "+replay.ImportSubject+", which only replay and export read")
	fs.BoolVar(&noVerify, "no-verify", false, "import while reading, without verifying the whole file first (a damaged file is then imported up to the damage)")
	fs.StringVar(&progress, "progress", "auto", "progress on standard error: auto, on or off")
	keyFile := registerArchiveKey(fs, "key file of a sealed archive")
	path, err := fileArg(fs, args)
	if err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	show, err := progressOn(progress, stderr)
	if err != nil {
		return err
	}
	key, err := archiveKey(*keyFile)
	if err != nil {
		return err
	}
	if !noVerify {
		if _, _, err := verifyFile(path, key); err != nil {
			return fmt.Errorf("nothing imported: %w", err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	plain, err := archive.Unseal(f, key)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	r, err := archive.NewReader(plain)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer r.Close()

	nf.role = bus.RoleReplay
	nc, js, err := bus.Connect(ctx, nf.conn("medpipe-archive", log))
	if err != nil {
		return err
	}
	defer nc.Close()
	// A fresh server gets the archive's partition count unless told otherwise.
	if _, err := js.Stream(ctx, bus.StreamRaw); errors.Is(err, jetstream.ErrStreamNotFound) && nf.streams.Partitions == 0 {
		nf.streams.Partitions = r.Header().Partitions
	}
	vctx, cancel := context.WithTimeout(ctx, stage.SetupTimeout)
	_, err = bus.VerifyStreams(vctx, js, nf.givenStreams(), log)
	cancel()
	if err != nil {
		return err
	}
	opts := replay.ImportOptions{Stream: bus.StreamRaw, Replicas: nf.streams.Replicas, OriginalSubjects: original}
	if show {
		opts.Progress = progressBar(stderr)
	}
	sum, err := replay.Import(ctx, js, r, opts)
	fmt.Fprintf(stdout, "imported %s: %d frames, %d stored, %d already there, %.1fs\n", filepath.Base(path), sum.Frames, sum.Stored, sum.Duplicates, sum.Elapsed.Seconds())
	return err
}

func archiveVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("archive verify", "Reads a whole archive, checking every record's checksum, the frame order and the manifest (counts, SHA-256). Damage is reported with its frame number and file offset.", stderr)
	keyFile := registerArchiveKey(fs, "key file of a sealed archive")
	path, err := fileArg(fs, args)
	if err != nil {
		return err
	}
	key, err := archiveKey(*keyFile)
	if err != nil {
		return err
	}
	h, m, err := verifyFile(path, key)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ok %s: origin %s, written %s; %s\n", path, h.Origin, h.Created.Format(time.RFC3339), describeManifest(m))
	return nil
}

func verifyFile(path string, key []byte) (archive.Header, archive.Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return archive.Header{}, archive.Manifest{}, err
	}
	defer f.Close()
	plain, err := archive.Unseal(f, key)
	if err != nil {
		return archive.Header{}, archive.Manifest{}, fmt.Errorf("%s: %w", path, err)
	}
	h, m, err := archive.Verify(plain)
	if err != nil {
		return h, m, fmt.Errorf("%s: %w", path, err)
	}
	return h, m, nil
}

// fileArg parses the flags and the one FILE argument, in any order.
func fileArg(fs *flag.FlagSet, args []string) (string, error) {
	pos, err := parseArgs(fs, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", fmt.Errorf("%s: want one archive FILE, got %d arguments", fs.Name(), len(pos))
	}
	return pos[0], nil
}

// registerArchiveKey adds --archive-key-file, the key of sealed archives.
func registerArchiveKey(fs *flag.FlagSet, usage string) *string {
	return fs.String("archive-key-file", "", usage)
}

// archiveKey reads --archive-key-file (nil when none is named).
func archiveKey(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	k, err := archive.ReadKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("--archive-key-file: %w", err)
	}
	return k, nil
}
