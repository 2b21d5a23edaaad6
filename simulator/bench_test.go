package simulator

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"
)

// maxBytesPerDevice is the memory bound a simulated device must stay under
// (heap and goroutine stacks): 10,000 devices then take under 400 MB.
const maxBytesPerDevice = 40 << 10

// BenchmarkFleetMemory connects 2,000 devices (a third of them v2) to a
// loopback sink and reports the memory each holds.
func BenchmarkFleetMemory(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { // a 256-byte buffer: io.Copy's 32 KiB would swamp the figure
				buf := make([]byte, 256)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	const n = 2000
	devs, err := GenerateDevices(n, "mem", "mixed")
	if err != nil {
		b.Fatal(err)
	}
	for i := range devs {
		devs[i].V2 = i%3 == 2
	}
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f, err := NewFleet(Options{Server: ln.Addr().String(), Devices: devs, Rate: 1, Ramp: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f.Run(ctx) }()
		for f.Stats().Connected < n {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(1500 * time.Millisecond) // every device has sent
		runtime.GC()
		runtime.ReadMemStats(&after)
		// The sink's goroutines are counted too: this overstates the device.
		perDevice := float64((after.HeapInuse+after.StackInuse)-(before.HeapInuse+before.StackInuse)) / n
		b.ReportMetric(perDevice, "B/device")
		cancel()
		<-done
		if perDevice > maxBytesPerDevice {
			b.Fatalf("%.0f bytes per device, bound %d", perDevice, maxBytesPerDevice)
		}
	}
}
