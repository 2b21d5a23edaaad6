package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// tlsFiles names the PEM files of one side of a TLS link. Flags carry file
// names only: a secret never sits in a flag's value or default.
type tlsFiles struct {
	ca, cert, key string
	prefix        string // flag prefix, for error messages
}

// register adds --<prefix>-ca, --<prefix>-cert and --<prefix>-key.
func (f *tlsFiles) register(fs *flag.FlagSet, prefix, caUsage, certUsage string) {
	f.prefix = prefix
	fs.StringVar(&f.ca, prefix+"-ca", "", caUsage)
	fs.StringVar(&f.cert, prefix+"-cert", "", certUsage)
	fs.StringVar(&f.key, prefix+"-key", "", "PEM private key of --"+prefix+"-cert")
}

func (f *tlsFiles) set() bool { return f.ca != "" || f.cert != "" || f.key != "" }

// certificate loads the certificate and key pair, if given.
func (f *tlsFiles) certificate() ([]tls.Certificate, error) {
	if (f.cert == "") != (f.key == "") {
		return nil, fmt.Errorf("--%s-cert and --%s-key go together", f.prefix, f.prefix)
	}
	if f.cert == "" {
		return nil, nil
	}
	c, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		// The error names files and PEM problems, never key material.
		return nil, fmt.Errorf("--%s-cert/--%s-key: %w", f.prefix, f.prefix, err)
	}
	return []tls.Certificate{c}, nil
}

// pool loads the CA bundle, if given.
func (f *tlsFiles) pool() (*x509.CertPool, error) {
	if f.ca == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(f.ca)
	if err != nil {
		return nil, fmt.Errorf("--%s-ca: %w", f.prefix, err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--%s-ca %s: no PEM certificate in it", f.prefix, f.ca)
	}
	return p, nil
}

// clientConfig is the TLS configuration of a client: the CA that signs the
// server (system roots when none is given) and an optional client
// certificate. It is nil when no file was given.
func (f *tlsFiles) clientConfig() (*tls.Config, error) {
	if !f.set() {
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

// serverConfig is the TLS configuration of a listener: its certificate and,
// when a CA is given, required client certificates signed by it.
func (f *tlsFiles) serverConfig() (*tls.Config, error) {
	if f.cert == "" {
		return nil, fmt.Errorf("--%s-cert and --%s-key are needed to serve TLS", f.prefix, f.prefix)
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

// secret returns a password from a file (its first line) or, when no file
// is named, from an environment variable; "" when neither is set. Secrets
// come from files or the environment only, so that they never show in a
// process listing or in `-h` output.
func secret(fileFlag, file, envVar string) (string, error) {
	if file == "" {
		return os.Getenv(envVar), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", fileFlag, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimRight(line, "\r")
	if line == "" {
		return "", fmt.Errorf("--%s %s: %w", fileFlag, file, errEmptySecret)
	}
	return line, nil
}

var errEmptySecret = errors.New("the file is empty")
