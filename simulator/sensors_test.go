package simulator

import (
	"sync/atomic"
	"testing"

	"github.com/medpipe/medpipe/wire"
)

// TestV2MissingSensor: a simulated device told its DS18B20 is missing
// seals readings that say so, its temperature absent (a placeholder 0 the
// pipeline turns into no value), the other values as measured.
func TestV2MissingSensor(t *testing.T) {
	devs, err := GenerateDevices(1, "v2", "pico")
	if err != nil {
		t.Fatal(err)
	}
	var forged atomic.Uint64
	v := newV2Device(devs[0].Device, 5, &forged)
	v.sensors[wire.TempSensor] = wire.SensorMissing
	sig := NewSignal(1, 20)
	r := sig.Next(1)
	frame, _, err := v.seal(1, r, sig)
	if err != nil {
		t.Fatal(err)
	}
	f, err := wire.ParseV2(frame)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := v.key.Open(nil, &f)
	if err != nil {
		t.Fatal(err)
	}
	p, err := wire.ParseV2Payload(plain)
	if err != nil {
		t.Fatal(err)
	}
	got := p.Reading()
	if p.Sensors[wire.TempSensor] != wire.SensorMissing || got[wire.Temp] != "" || got[wire.TempMcu] != r[wire.TempMcu] {
		t.Fatalf("states %v, reading %q (simulated %q)", p.Sensors, got, r)
	}
}
