package ingest

import "time"

// Defaults of Options, used by the package and by medpipe's flags alike
// (the per-address limits are in limits.go).
const (
	// DefaultListen and DefaultTLSListen are the device ports: plain TCP,
	// as today's devices connect, and TLS when a certificate is given.
	DefaultListen    = ":9998"
	DefaultTLSListen = ":9997"
	// DefaultMaxConns bounds device connections at once.
	DefaultMaxConns = 20000
	// DefaultMaxFrameRate bounds frames per second read from one
	// connection: five times a device's 20 readings per second.
	DefaultMaxFrameRate = 100
	// DefaultMaxBadFrames closes a connection once this many of its frames
	// were dead-lettered.
	DefaultMaxBadFrames = 10
	// DefaultMaxPendingFrames bounds frames awaiting RAW's acknowledgement
	// over all connections, below the NATS connection's 4,096 pending
	// asynchronous publishes.
	DefaultMaxPendingFrames = 2048
	// DefaultRawLinger is Options.RawLinger's default: a busy partition
	// stores at most one RAW message every 2 ms.
	DefaultRawLinger = 2 * time.Millisecond
	// DefaultIdleTimeout closes a device connection silent for this long.
	DefaultIdleTimeout = 2 * time.Minute
)
