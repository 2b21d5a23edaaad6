package secrets

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("SECRETS_TEST_PW", "from-env")
	tests := []struct {
		name, file, want string
		err              error
	}{
		{"first line", write("pw", "s3cret\nignored\n"), "s3cret", nil},
		{"crlf", write("crlf", "s3cret\r\n"), "s3cret", nil},
		{"empty file", write("empty", "\n"), "", ErrEmpty},
		{"environment", "", "from-env", nil},
		{"missing file", filepath.Join(dir, "nope"), "", os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Read("pw-file", tt.file, "SECRETS_TEST_PW")
			if !errors.Is(err, tt.err) || got != tt.want {
				t.Fatalf("Read: %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
			if err != nil && !strings.Contains(err.Error(), "--pw-file") {
				t.Fatalf("error does not name the flag: %v", err)
			}
		})
	}
}

func TestTLSFiles(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		f       TLSFiles
		server  bool
		wantErr string
	}{
		{"nothing: no TLS", TLSFiles{Prefix: "x"}, false, ""},
		{"cert without key", TLSFiles{Cert: "c", Prefix: "x"}, false, "--x-cert and --x-key go together"},
		{"CA not PEM", TLSFiles{CA: notPEM, Prefix: "x"}, false, "no PEM certificate"},
		{"server needs a cert", TLSFiles{CA: notPEM, Prefix: "x"}, true, "needed to serve TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.server {
				_, err = tt.f.ServerConfig()
			} else {
				cfg, cerr := tt.f.ClientConfig()
				if cerr == nil && cfg != nil && !tt.f.Set() {
					t.Fatal("a TLS config without any file")
				}
				err = cerr
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
}
