// Package bus is the contract between medpipe's stages: stream, subject and
// header names, the READINGS message, stream, consumer and bucket
// configurations (created by an admin with ApplyStreams, verified and never
// changed by stages with VerifyStreams), the partitioned ordered consumer
// every stage reads with, one NATS user per role with exactly the
// permissions its work needs (RolePermissions, shipped as
// deploy/nats/auth.conf), and an embedded nats-server with JetStream
// (encrypted at rest) and MQTT for `medpipe up` and for tests.
package bus
