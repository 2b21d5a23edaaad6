package main

import (
	"io"
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
