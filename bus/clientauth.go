package bus

import (
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/medpipe/medpipe/secrets"
)

// ClientPasswordEnv is the environment variable a NATS password is read from when
// Auth names no password file.
const ClientPasswordEnv = "MEDPIPE_NATS_PASSWORD"

// Auth is how a client proves itself to NATS and checks the server: every
// stage and every command that talks to NATS (keys, replay, archive) uses it,
// so a setting works the same everywhere. Secrets are named by file only.
type Auth struct {
	// User, with the password from PasswordFile (or ClientPasswordEnv).
	User         string
	PasswordFile string
	// Creds is a .creds file (user JWT and nkey seed).
	Creds string
	// NKey is a file holding a user nkey seed.
	NKey string
	// TLS names the CA that signs the servers and an optional client certificate.
	TLS secrets.TLSFiles
	// Role and CredentialsDir: with no User, Creds or NKey, connect as Role
	// with the password in CredentialsDir (as medpipe up generates it; see
	// LoadOrCreateCredentials), when that file exists.
	Role           Role
	CredentialsDir string
}

// Options are the nats.go options for the credentials and TLS given.
func (a Auth) Options() ([]nats.Option, error) {
	var opts []nats.Option
	if a.User != "" {
		pw, err := secrets.Read("nats-password-file", a.PasswordFile, ClientPasswordEnv)
		if err != nil {
			return nil, err
		}
		opts = append(opts, UserOptions(a.User, pw)...)
	} else if a.Creds == "" && a.NKey == "" && a.Role != "" && a.CredentialsDir != "" {
		pw, err := ReadCredential(a.CredentialsDir, a.Role)
		switch {
		case err == nil:
			opts = append(opts, UserOptions(string(a.Role), pw)...)
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("--nats-credentials-dir: %w", err)
		}
	}
	if a.Creds != "" {
		if _, err := os.Stat(a.Creds); err != nil {
			return nil, fmt.Errorf("--nats-creds: %w", err)
		}
		opts = append(opts, nats.UserCredentials(a.Creds))
	}
	if a.NKey != "" {
		o, err := nats.NkeyOptionFromSeed(a.NKey)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey %s: %w", a.NKey, err)
		}
		opts = append(opts, o)
	}
	if a.TLS.Prefix == "" {
		a.TLS.Prefix = "nats"
	}
	cfg, err := a.TLS.ClientConfig()
	if err != nil {
		return nil, err
	}
	if cfg != nil {
		opts = append(opts, nats.Secure(cfg))
	}
	return opts, nil
}
