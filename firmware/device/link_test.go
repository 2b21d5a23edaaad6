package device

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/medpipe/medpipe/firmware/esp"
	"github.com/medpipe/medpipe/firmware/esp/espfake"
	"github.com/medpipe/medpipe/firmware/hwfake"
	"github.com/medpipe/medpipe/testkit"
	"github.com/medpipe/medpipe/wire"
)

// linkRig is a device in working mode through a fake ESP8266 whose UART is
// metered at 115,200 baud, sending to a loopback edge that acknowledges
// every v2 frame.
type linkRig struct {
	mod    *espfake.Module
	motion *hwfake.MPU6050
	temp   *hwfake.DS18B20
	d      *Device
	cfg    Config
	mu     sync.Mutex
	steady espfake.LinkStats // the UART's counters when the edge accepted the link
	frames int
	bytes  int
	// answer, set with setAnswer before Work, makes the edge's reply to each frame
	// (nil: none) instead of an ACK; n counts the frame's arrivals so far
	// (1: first), close makes the edge close the connection after replying.
	answer func(v *wire.V2Frame, n int, key *wire.V2Key) (reply []byte, close bool)
	seen   map[uint64]int // arrivals per sequence number
	conns  int            // connections the edge accepted
	acks   int            // ACKs the edge sent
}

func newLinkRig(t *testing.T, o espfake.Options, opts Options) *linkRig {
	t.Helper()
	r := &linkRig{cfg: storageConfig("ward-7")}
	key := wire.NewV2Key(r.cfg.Device) // the pipeline's ACKs are made with the device's key
	edge := testkit.ServeTCP(t, func(c net.Conn) {
		r.mu.Lock()
		r.steady = r.mod.Link()
		r.conns++
		answer := r.answer
		r.mu.Unlock()
		var buf []byte
		for {
			f, err := wire.ReadV2Frame(c, buf, 1<<16)
			if err != nil {
				return
			}
			v, err := wire.ParseV2(f)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.frames++
			r.bytes += len(f)
			if r.seen == nil {
				r.seen = map[uint64]int{}
			}
			r.seen[v.Seq]++
			n := r.seen[v.Seq]
			r.mu.Unlock()
			reply, closeConn := key.AppendAck(nil, v.Seq, v.Tag()), false
			if answer != nil {
				reply, closeConn = answer(&v, n, key)
			}
			if reply != nil {
				if _, err := c.Write(reply); err != nil {
					return
				}
				if reply[2] == wire.V2Ack {
					r.mu.Lock()
					r.acks++
					r.mu.Unlock()
				}
			}
			if closeConn {
				return
			}
			buf = f
		}
	})
	o.Networks = map[string]string{r.cfg.WiFiSSID: r.cfg.WiFiPassword}
	o.Resolve = func(string, int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(edge.Port)) }
	mod, uart := espfake.New(o)
	t.Cleanup(func() { mod.Close() })
	r.mu.Lock() // the edge's handler reads it
	r.mod = mod
	r.mu.Unlock()
	motion := &hwfake.MPU6050{}
	motion.Set(0.01, -0.02, 0.98, 24.5)
	r.motion, r.temp = motion, hwfake.NewDS18B20(36.625)
	pulse := &hwfake.ADC{}
	pulse.SetVolts(1.735)
	opts.ESP = esp.Options{CommandTimeout: 2 * time.Second}
	r.d = New(&Board{UART: uart, I2C: motion, Pulse: pulse, ChipTemp: func() float64 { return 23.7 },
		OneWire: r.temp.Bus(), ConfigSwitch: &hwfake.Pin{}, LED: &hwfake.LED{},
		Storage: hwfake.NewFlash(StorageSize), Log: func(s string) { t.Log("firmware: " + s) }}, opts)
	return r
}

func (r *linkRig) work(t *testing.T, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	if err := r.d.Work(ctx, r.cfg); err != nil {
		t.Fatalf("working mode: %v (stats %+v)", err, r.d.Stats)
	}
}

// setAnswer sets the edge's answer to each frame (see linkRig.answer).
func (r *linkRig) setAnswer(f func(v *wire.V2Frame, n int, key *wire.V2Key) ([]byte, bool)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answer = f
}

// TestLinkBudget: 20 readings/s with 250 Hz pulse samples must leave at
// least 30 % of the UART idle at 115,200 baud, in each direction, counting
// every byte the AT exchange of each send takes (AT+CIPSEND, OK, the >
// prompt, Recv, SEND OK, and the edge's acknowledgement as +IPD).
func TestLinkBudget(t *testing.T) {
	const readings = 100 // 5 s of readings
	r := newLinkRig(t, espfake.Options{}, Options{Readings: readings})
	r.work(t, 60*time.Second)
	end := r.mod.Link()
	r.mu.Lock()
	steady, frames, bytes := r.steady, r.frames, r.bytes
	r.mu.Unlock()
	if frames < readings {
		t.Fatalf("the edge received %d frames of %d", frames, readings)
	}
	// Line time per reading, against the 50 ms a reading has.
	schedule := time.Duration(readings) * r.d.o.Period
	toMod := end.ToModuleBusy - steady.ToModuleBusy
	fromMod := end.FromModuleBusy - steady.FromModuleBusy
	perFrame := bytes / frames
	t.Logf("%d readings: frames of %d bytes; UART to the module %d bytes (%.1f %% busy), from it %d bytes (%.1f %% busy)",
		readings, perFrame, end.ToModule-steady.ToModule, 100*toMod.Seconds()/schedule.Seconds(),
		end.FromModule-steady.FromModule, 100*fromMod.Seconds()/schedule.Seconds())
	// The compact payload (wire/PROTOCOL.md, "Size per frame"): header,
	// 47 bytes of payload with the sensor states, 13 samples of 50 ms at
	// 250 Hz packed in 20 bytes, the tag.
	if want := 5 + 1 + len(r.cfg.Device.ID) + 8 + 47 + 20 + wire.V2TagLen; perFrame > want {
		t.Errorf("v2 frames are %d bytes on average, more than the protocol's %d", perFrame, want)
	}
	for dir, busy := range map[string]time.Duration{"to the module": toMod, "from the module": fromMod} {
		if busy > schedule*70/100 {
			t.Errorf("UART %s busy %.1f %% of the time: less than 30 %% idle", dir, 100*busy.Seconds()/schedule.Seconds())
		}
	}
}

// TestSamplerRunsWhileSendInFlight: with a send held in flight by the
// module (its SEND OK withheld), the pulse sampler still takes every tick:
// it runs on its own goroutine, not in the loop that sends. The ticks are
// the test's, so a busy machine cannot make this flaky: a sampler sharing
// the send loop would leave the test stuck on its first tick.
func TestSamplerRunsWhileSendInFlight(t *testing.T) {
	inFlight, release := make(chan struct{}, 1), make(chan struct{})
	var once sync.Once
	ticks := make(chan time.Time)
	r := newLinkRig(t, espfake.Options{BeforeSendOK: func() {
		select {
		case inFlight <- struct{}{}:
		default:
		}
		<-release
	}}, Options{pulseTicks: ticks})
	defer once.Do(func() { close(release) })
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.d.Work(ctx, r.cfg) }()
	select {
	case <-inFlight:
	case err := <-done:
		t.Fatalf("working mode ended: %v", err)
	case <-ctx.Done():
		t.Fatal("no send went out within 60 s")
	}
	const n = 2 * 250 // two seconds of ticks while the send waits
	at := time.Unix(0, 0)
	for i := range n {
		at = at.Add(4 * time.Millisecond)
		select {
		case ticks <- at:
		case <-time.After(10 * time.Second):
			t.Fatalf("the sampler took %d ticks and then none for 10 s while a send was in flight", i)
		}
	}
	// The last tick is taken; its sample may still be on its way in.
	taken, missed := r.d.pulseCounts()
	for deadline := time.Now().Add(10 * time.Second); taken < n && time.Now().Before(deadline); taken, missed = r.d.pulseCounts() {
		time.Sleep(time.Millisecond)
	}
	t.Logf("%d ticks while one send was in flight: %d samples taken, %d missed", n, taken, missed)
	if taken < n || missed != 0 {
		t.Errorf("%d samples taken, %d missed of %d ticks", taken, missed, n)
	}
	once.Do(func() { close(release) })
	cancel()
	<-done
}
