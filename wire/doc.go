// Package wire holds the device protocol codecs that medpipe shares with the
// device firmware: the reading a device sends, the legacy AES-128-CBC frame
// format in its two field variants, the frame reader that cuts a legacy TCP
// stream into frames, and the operators' JSON-lines keys file.
//
// The package imports only the Go standard library so that the TinyGo
// firmware can use the same code as the server.
package wire
