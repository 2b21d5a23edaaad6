package main

import (
	"flag"

	"github.com/medpipe/medpipe/secrets"
)

// registerTLS adds --<prefix>-ca, --<prefix>-cert and --<prefix>-key, which
// name files only: a secret never sits in a flag's value or default.
func registerTLS(fs *flag.FlagSet, f *secrets.TLSFiles, prefix, caUsage, certUsage string) {
	f.Prefix = prefix
	fs.StringVar(&f.CA, prefix+"-ca", "", caUsage)
	fs.StringVar(&f.Cert, prefix+"-cert", "", certUsage)
	fs.StringVar(&f.Key, prefix+"-key", "", "PEM private key of --"+prefix+"-cert")
}
