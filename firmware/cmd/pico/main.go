//go:build tinygo

// Command pico is the medpipe wearable's firmware for the Raspberry Pi Pico.
// Build it with firmware/tinygo.sh (see firmware/README.md); the
// per-device secrets are not in the image but in the factory block that
// `medpipe keys add ID --firmware-config` writes.
package main

import (
	"context"
	"time"

	"github.com/medpipe/medpipe/firmware/board"
	"github.com/medpipe/medpipe/firmware/device"
)

// wiring selects the board: "old" (default: GP2 drives the switch's
// common, GP3/GP4 active-high, LED on GP25) or "new" (switch to ground,
// GP3/GP4 active-low, LED on GP2). Set with -ldflags -X main.wiring=new
// (firmware/tinygo.sh --wiring new).
var wiring = "old"

func main() {
	w := board.WiringOld
	if wiring == "new" {
		w = board.WiringNew
	} else if wiring != "old" {
		println("medpipe: unknown wiring", wiring, "(old or new)")
		return
	}
	b, err := board.New(w)
	if err != nil {
		println("medpipe:", err.Error())
		return
	}
	d := device.New(b, device.Options{})
	for {
		// Run returns only on a fault it cannot retry (flash unreadable,
		// no factory block): show it, wait, and start over rather than sit
		// dead on a patient.
		if err := d.Run(context.Background()); err != nil {
			println("medpipe:", err.Error())
		}
		time.Sleep(5 * time.Second)
	}
}
