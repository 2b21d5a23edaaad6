// Package page holds the configuration page, gzip-compressed at build time.
package page

import _ "embed"

//go:generate go run ../../internal/gzippage page.html page.html.gz

// Gzip is page.html compressed with gzip: serve it with
// Content-Encoding: gzip.
//
//go:embed page.html.gz
var Gzip []byte

// MaxSize is the budget for Gzip: at the old firmware's effective link rate
// (2,000 bytes every 300 ms) 8 KB loads in about a second, not ten.
const MaxSize = 8 << 10
