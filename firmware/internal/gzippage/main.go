// Command gzippage compresses the configuration page at build time (go
// generate in device/page) with the strongest gzip level, so the device
// serves it as stored, with Content-Encoding: gzip.
package main

import (
	"bytes"
	"fmt"
	"os"

	"github.com/klauspost/compress/gzip"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gzippage page.html page.html.gz")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "gzippage:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	page, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	// No name and no modification time in the header: the output depends on
	// the page alone, so a test can tell whether it is up to date.
	if _, err := zw.Write(page); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Printf("%s: %d bytes, gzip %d bytes (%.1f%%)\n", out, len(page), buf.Len(), 100*float64(buf.Len())/float64(len(page)))
	return nil
}
