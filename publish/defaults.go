package publish

import "github.com/medpipe/medpipe/bus"

// Defaults, used by the package and by medpipe's flags alike.
const (
	// DefaultPrefix is the first level of every live MQTT topic: today's
	// dashboards subscribe to Pico/#. The bus defines it, because the
	// embedded server's permissions are written for it too.
	DefaultPrefix = bus.DefaultTopicPrefix
	// DefaultMQTTURL is the broker publish connects to unless told otherwise.
	DefaultMQTTURL = "tcp://127.0.0.1:1883"
	// DefaultQoS is the MQTT QoS of every message: 1, so that a reading is
	// acknowledged only once the broker has it.
	DefaultQoS = 1
	// DefaultAddressEvery: a device's addresses go out on its first reading
	// and every this many after.
	DefaultAddressEvery = 50
	// DefaultMaxInFlight bounds readings in flight per partition. 512 is
	// what `medpipe publish` and `up` have always run with, so every figure
	// in README.md and bench/README.md was measured with it; the package's
	// former 256 was never measured. DefaultMaxInFlightMessages bounds the
	// MQTT messages over all partitions anyway.
	DefaultMaxInFlight = 512
	// DefaultMaxInFlightMessages bounds MQTT messages awaiting the broker's
	// ack over all partitions (MQTT packet ids allow 65,535).
	DefaultMaxInFlightMessages = 16384
)
