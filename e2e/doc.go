// Package e2e holds medpipe's system tests: they build the medpipe binary,
// run stages as separate processes against real NATS (single node and
// cluster), Mosquitto and TLS, kill and restart them, and account for every
// reading. They take minutes; run them with `go test ./e2e/` (or one with
// -run). The stages' own packages keep their in-process tests.
package e2e
