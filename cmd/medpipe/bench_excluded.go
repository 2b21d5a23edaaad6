//go:build !bench

package main

import (
	"context"
	"errors"
	"io"
)

// benchLinked says whether `medpipe bench` is in this build.
const benchLinked = false

// errBenchExcluded is what `medpipe bench` answers in a production build:
// the harness links plotting, fonts and PDF code that a stage never needs.
var errBenchExcluded = errors.New("this medpipe was built without bench: build it with `go build -tags bench ./cmd/medpipe` (or `go run -tags bench ./cmd/medpipe bench …`)")

func runBench(context.Context, []string, io.Writer, io.Writer) error { return errBenchExcluded }
