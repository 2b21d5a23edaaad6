package decrypt

import (
	"testing"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// TestV2SensorStates: a v2 frame whose DS18B20 is missing becomes a
// reading that carries the state and no temperature: "" (null in JSON),
// never the device's placeholder 0.
func TestV2SensorStates(t *testing.T) {
	js := setup(t)
	devs := loadKeys(t)
	d := devs[1]
	runV2Worker(t, js, devs)
	p := wire.V2Payload{Time: 1764000000000, Values: wire.V2Values{TempMcu: 23.7, PulseSig: 1.7, AcelZ: 0.98, TempMpu: 23.4},
		Sensors: wire.SensorStates{wire.TempSensor: wire.SensorMissing}}
	payload, err := wire.AppendV2Payload(nil, &p)
	if err != nil {
		t.Fatal(err)
	}
	frame, err := wire.NewV2Key(d).SealData(nil, wire.V2Seq(1, 1), payload)
	if err != nil {
		t.Fatal(err)
	}
	publishV2Raw(t, js, d.ID, 1, frame)
	m := streamMsgs(t, js, bus.StreamReadings, 1)[0]
	r, err := bus.UnmarshalReading(m.Data())
	if err != nil {
		t.Fatal(err)
	}
	if r.Sensors[wire.TempSensor] != wire.SensorMissing || r.Sensors[wire.MotionSensor] != wire.SensorOK {
		t.Fatalf("sensor states %v", r.Sensors)
	}
	if r.Values.Temp != "" || r.Numbers.Temp != 0 || r.Values.TempMcu != "23.700" || r.Values.AcelZ != "0.980" {
		t.Fatalf("values %+v", r.Values)
	}
}
