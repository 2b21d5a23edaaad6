package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestStreamCompressionFlag: --stream-compression takes none or s2 from the
// command line or MEDPIPE_STREAM_COMPRESSION, the command line first, and
// refuses anything else by name.
func TestStreamCompressionFlag(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     string
		want    jetstream.StoreCompression
		wantErr bool
	}{
		{name: "default", want: jetstream.NoCompression},
		{name: "s2", args: []string{"--stream-compression", "s2"}, want: jetstream.S2Compression},
		{name: "upper case", args: []string{"--stream-compression", "S2"}, want: jetstream.S2Compression},
		{name: "none", args: []string{"--stream-compression", "none"}, want: jetstream.NoCompression},
		{name: "from the environment", env: "s2", want: jetstream.S2Compression},
		{name: "command line over environment", args: []string{"--stream-compression", "none"}, env: "s2", want: jetstream.NoCompression},
		{name: "unknown", args: []string{"--stream-compression", "zstd"}, wantErr: true},
		{name: "unknown in the environment", env: "gzip", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("MEDPIPE_STREAM_COMPRESSION", tt.env)
			}
			var n natsFlags
			fs := newFlagSet("test", "", io.Discard)
			n.registerStreams(fs)
			err := parseFlags(fs, tt.args)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("accepted; compression %v", n.streams.Compression)
				}
				return
			}
			if err != nil || n.streams.Compression != tt.want {
				t.Fatalf("compression %v, err %v; want %v", n.streams.Compression, err, tt.want)
			}
		})
	}
}

// TestFlagsAnywhere: flags are taken before, between and after positional
// arguments, "--" ends them, and the old in-flight spellings still work.
func TestFlagsAnywhere(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		pos     []string
		nats    string
		inFlt   int
		warn    string
		wantErr string
	}{
		{name: "flags first", args: []string{"--nats", "n", "import", "f"}, pos: []string{"import", "f"}, nats: "n"},
		{name: "flags last", args: []string{"import", "f", "--nats", "n"}, pos: []string{"import", "f"}, nats: "n"},
		{name: "flags between", args: []string{"import", "--nats=n", "f"}, pos: []string{"import", "f"}, nats: "n"},
		{name: "double dash", args: []string{"import", "--", "--nats"}, pos: []string{"import", "--nats"}, nats: "d"},
		{name: "new spelling", args: []string{"--decrypt-in-flight", "7"}, nats: "d", inFlt: 7},
		{name: "old spelling", args: []string{"--max-inflight", "9"}, nats: "d", inFlt: 9, warn: "--max-inflight (MEDPIPE_MAX_INFLIGHT) is deprecated; use --decrypt-in-flight"},
		{name: "old spelling in the environment", env: map[string]string{"MEDPIPE_MAX_INFLIGHT": "11"}, nats: "d", inFlt: 11, warn: "deprecated"},
		{name: "new environment wins", env: map[string]string{"MEDPIPE_MAX_INFLIGHT": "11", "MEDPIPE_DECRYPT_IN_FLIGHT": "12"}, nats: "d", inFlt: 12, warn: "deprecated"},
		{name: "both spellings", args: []string{"--max-inflight", "9", "--decrypt-in-flight", "7"}, wantErr: "give one of them"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var warn strings.Builder
			deprecationOut = &warn
			t.Cleanup(func() { deprecationOut = os.Stderr })
			fs := newFlagSet("test", "", io.Discard)
			var nats string
			var df decryptFlags
			fs.StringVar(&nats, "nats", "d", "")
			df.register(fs, 1)
			pos, err := parseArgs(fs, tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || fmt.Sprint(pos) != fmt.Sprint(tt.pos) || nats != tt.nats {
				t.Fatalf("pos %q nats %q err %v; want %q %q", pos, nats, err, tt.pos, tt.nats)
			}
			if tt.inFlt != 0 && df.maxInFlight != tt.inFlt {
				t.Fatalf("in flight %d, want %d", df.maxInFlight, tt.inFlt)
			}
			if !strings.Contains(warn.String(), tt.warn) || tt.warn == "" && warn.Len() > 0 {
				t.Fatalf("warning %q, want %q", warn.String(), tt.warn)
			}
		})
	}
}

func TestSubcommandFirst(t *testing.T) {
	for _, tt := range []struct{ in, want []string }{
		{[]string{"export", "--out", "f"}, []string{"export", "--out", "f"}},
		{[]string{"--nats", "n", "export", "--out", "f"}, []string{"export", "--nats", "n", "--out", "f"}},
		{[]string{"--", "export"}, []string{"--", "export"}},
		{[]string{"--nats", "n"}, []string{"--nats", "n"}},
	} {
		if got := subcommandFirst(tt.in, "export", "import", "verify"); fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("subcommandFirst(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
