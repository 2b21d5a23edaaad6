// Package bus is the contract between medpipe's stages: stream, subject and
// header names, the READINGS message, stream and consumer configurations
// (created or verified at start-up), the partitioned ordered consumer every
// stage reads with, and an embedded nats-server with JetStream and MQTT for
// `medpipe up` and for tests.
package bus
