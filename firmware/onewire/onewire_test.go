package onewire_test

import (
	"errors"
	"testing"

	"github.com/medpipe/medpipe/firmware/hwfake"
	"github.com/medpipe/medpipe/firmware/onewire"
)

func TestDS18B20(t *testing.T) {
	for _, temp := range []float64{36.625, -10.5, 0, 41.0625} {
		s := hwfake.NewDS18B20(temp)
		d := onewire.DS18B20{Bus: s.Bus()}
		if _, err := d.Read(); !errors.Is(err, onewire.ErrNotReady) {
			t.Fatalf("before a conversion: %v", err)
		}
		if err := d.Convert(); err != nil {
			t.Fatal(err)
		}
		got, err := d.Read()
		if err != nil || got != temp {
			t.Fatalf("read %v, %v; want %v", got, err, temp)
		}
		if s.Errors != 0 {
			t.Fatalf("%d slots out of the datasheet's timing", s.Errors)
		}
		// The sensor's bit is valid 15 µs after the falling edge: sample
		// with margin for the pull-up's rise time, every slot with
		// interrupts off.
		if s.LatestSample > 12 || s.OutsideCritical != 0 {
			t.Fatalf("read slots sampled up to %d µs after the edge; %d slots outside the critical section", s.LatestSample, s.OutsideCritical)
		}
	}
}

func TestNoDevice(t *testing.T) {
	b := &onewire.Bus{Line: floating{}, Delay: func(int) {}}
	if _, err := (onewire.DS18B20{Bus: b}).Read(); !errors.Is(err, onewire.ErrNoDevice) {
		t.Fatalf("got %v", err)
	}
}

// floating is a line with nothing on it: the pull-up holds it high.
type floating struct{}

func (floating) Low()       {}
func (floating) Release()   {}
func (floating) Read() bool { return true }

func TestCRC8(t *testing.T) {
	tests := []struct {
		data []byte
		want byte
	}{
		{[]byte{0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00}, 0xA2}, // Maxim AN27 ROM example
		{nil, 0},
	}
	for _, tt := range tests {
		if got := onewire.CRC8(tt.data); got != tt.want {
			t.Errorf("CRC8(% x) = %#x, want %#x", tt.data, got, tt.want)
		}
	}
}
