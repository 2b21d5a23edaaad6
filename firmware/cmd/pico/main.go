//go:build tinygo

// Command pico is the medpipe wearable's firmware for the Raspberry Pi Pico:
//
//	tinygo flash -target=pico -ldflags "-X main.serial=0042 -X main.apPassword=... -X main.provisioningKey=<32 hex>" ./cmd/pico
package main

import (
	"context"
	"time"

	"github.com/medpipe/medpipe/firmware/board"
	"github.com/medpipe/medpipe/firmware/device"
)

// Set per device at build time with -ldflags -X; the defaults are for the bench only.
var (
	serial          = "dev"
	apPassword      = "medpipe-setup"
	provisioningKey = "000102030405060708090a0b0c0d0e0f"
)

func main() {
	b, err := board.New(serial, apPassword, provisioningKey)
	if err != nil {
		println("medpipe:", err.Error())
		return
	}
	d := device.New(b, device.Options{})
	for {
		// Run returns only on a fault it cannot retry (flash unreadable, say):
		// show it, wait, and start over rather than sit dead on a patient.
		if err := d.Run(context.Background()); err != nil {
			println("medpipe:", err.Error())
		}
		time.Sleep(5 * time.Second)
	}
}
