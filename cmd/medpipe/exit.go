package main

import (
	"errors"
	"flag"
	"io/fs"
)

// Exit codes: 0 success (and -h), 1 a failure while running, 2 a usage or
// configuration error (a bad flag or value, an invalid config file, a file
// named that does not exist), as flag, grep and most Unix tools do. A
// supervisor can tell "fix the configuration" from "try again".
const (
	exitFailure = 1
	exitUsage   = 2
)

// usageError is an error in how medpipe was invoked or configured.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usageErr marks err (nil stays nil) as a usage or configuration error.
func usageErr(err error) error {
	if err == nil {
		return nil
	}
	var u *usageError
	if errors.As(err, &u) {
		return err
	}
	return &usageError{err}
}

// exitCode is the process exit code for run's error.
func exitCode(err error) int {
	var u *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &u), errors.Is(err, fs.ErrNotExist):
		return exitUsage
	}
	return exitFailure
}
