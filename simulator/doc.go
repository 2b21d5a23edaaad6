// Package simulator runs simulated medical devices (legacy and v2): each its own TCP
// connection to the ingest edge, its own key and variant, sending encrypted
// readings at a set rate and reconnecting with capped exponential backoff
// when the edge goes away. It is what `medpipe up --simulate` and
// `medpipe simulate` run.
package simulator
