//go:build !tinygo

package main

import (
	"fmt"
	"os"
)

// Built with standard Go, the firmware has no board to run on: its logic
// is tested on the host through the firmware/device and firmware/e2e tests.
func main() {
	fmt.Fprintln(os.Stderr, "this is the Pico's firmware: build it with TinyGo (see firmware/README.md):\n  tinygo flash -target=pico ./cmd/pico")
	os.Exit(2)
}
