// Package secrets reads passwords and TLS material from files (or, for a
// password, the environment). Flags carry file names only, so a secret never
// shows in a process listing, in `-h` output or in a flag's default.
package secrets

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrEmpty is returned for a secret file with nothing on its first line.
var ErrEmpty = errors.New("the file is empty")

// Read returns a password from a file (its first line) or, when no file is
// named, from the environment variable env; "" when neither is set. flag
// names the setting in errors (which never carry the secret).
func Read(flag, file, env string) (string, error) {
	if file == "" {
		return os.Getenv(env), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flag, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimRight(line, "\r")
	if line == "" {
		return "", fmt.Errorf("--%s %s: %w", flag, file, ErrEmpty)
	}
	return line, nil
}

// TLSFiles names the PEM files of one side of a TLS link.
type TLSFiles struct {
	CA, Cert, Key string
	// Prefix is the flags' prefix (--<Prefix>-ca…), for error messages.
	Prefix string
}

// Set reports whether any file is named.
func (f TLSFiles) Set() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// certificate loads the certificate and key pair, if given.
func (f TLSFiles) certificate() ([]tls.Certificate, error) {
	if (f.Cert == "") != (f.Key == "") {
		return nil, fmt.Errorf("--%s-cert and --%s-key go together", f.Prefix, f.Prefix)
	}
	if f.Cert == "" {
		return nil, nil
	}
	c, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		// The error names files and PEM problems, never key material.
		return nil, fmt.Errorf("--%s-cert/--%s-key: %w", f.Prefix, f.Prefix, err)
	}
	return []tls.Certificate{c}, nil
}

// pool loads the CA bundle, if given.
func (f TLSFiles) pool() (*x509.CertPool, error) {
	if f.CA == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("--%s-ca: %w", f.Prefix, err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--%s-ca %s: no PEM certificate in it", f.Prefix, f.CA)
	}
	return p, nil
}

// ClientConfig is the TLS configuration of a client: the CA that signs the
// server (system roots when none is given) and an optional client
// certificate. It is nil when no file was given.
func (f TLSFiles) ClientConfig() (*tls.Config, error) {
	if !f.Set() {
		return nil, nil
	}
	certs, err := f.certificate()
	if err != nil {
		return nil, err
	}
	roots, err := f.pool()
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, Certificates: certs}, nil
}

// ServerConfig is the TLS configuration of a listener: its certificate and,
// when a CA is given, required client certificates signed by it.
func (f TLSFiles) ServerConfig() (*tls.Config, error) {
	if f.Cert == "" {
		return nil, fmt.Errorf("--%s-cert and --%s-key are needed to serve TLS", f.Prefix, f.Prefix)
	}
	certs, err := f.certificate()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: certs}
	if cfg.ClientCAs, err = f.pool(); err != nil {
		return nil, err
	}
	if cfg.ClientCAs != nil {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
