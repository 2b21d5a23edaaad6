// Package rawgen makes RAW messages exactly as the ingest edge stores them
// (same subjects, headers and message ids), from simulated devices with
// realistic signals and an explicit clock: tests and benchmarks of replay
// and archive record "hours" of a fleet in seconds with it.
package rawgen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/simulator"
	"github.com/medpipe/medpipe/wire"
)

// Device is one simulated device.
type Device struct {
	wire.Device
	Protocol string       // bus.ProtocolLegacy or bus.ProtocolV2
	Variant  wire.Variant // legacy encoder
}

// Devices makes n devices named prefix-001…, with keys derived from seed;
// every third speaks v2, the others alternate pico and pseudo.
func Devices(n int, prefix string, seed uint64) []Device {
	rng := rand.New(rand.NewPCG(seed, 7))
	out := make([]Device, n)
	for i := range out {
		var d Device
		d.ID = fmt.Sprintf("%s-%03d", prefix, i+1)
		for j := range d.Key {
			d.Key[j] = byte('a' + rng.IntN(26))
			d.IV[j] = byte('A' + rng.IntN(26))
		}
		switch {
		case i%3 == 2:
			d.Protocol = bus.ProtocolV2
		case i%2 == 0:
			d.Protocol, d.Variant = bus.ProtocolLegacy, wire.Pico
		default:
			d.Protocol, d.Variant = bus.ProtocolLegacy, wire.Pseudo
		}
		out[i] = d
	}
	return out
}

// Options configures a Generator.
type Options struct {
	Devices []Device
	// Start is the receive time of every device's first reading.
	Start time.Time
	// Rate is readings per second per device (default 1).
	Rate float64
	// Partitions of RAW (default bus.DefaultPartitions).
	Partitions int
	// Seed makes the signals and v2 nonces reproducible.
	Seed uint64
}

// Generator yields the RAW messages of every device, reading by reading,
// in receive-time order (round robin over the devices).
type Generator struct {
	o     Options
	devs  []genDevice
	rng   *rand.Rand
	tick  uint64 // readings per device so far
	next  int    // next device within the tick
	plain []byte
}

type genDevice struct {
	Device
	conn   string
	remote string
	sig    *simulator.Signal
	legacy *wire.LegacyKey
	v2     *wire.V2Key
}

// New starts a generator.
func New(o Options) *Generator {
	if o.Rate <= 0 {
		o.Rate = 1
	}
	if o.Partitions <= 0 {
		o.Partitions = bus.DefaultPartitions
	}
	g := &Generator{o: o, rng: rand.New(rand.NewPCG(o.Seed, 11)), devs: make([]genDevice, len(o.Devices))}
	for i, d := range o.Devices {
		gd := genDevice{
			Device: d,
			conn:   fmt.Sprintf("gen-%d-%d", o.Seed, i+1),
			remote: fmt.Sprintf("10.0.%d.%d:%d", i/250, i%250+1, 40000+i%20000),
			sig:    simulator.NewSignal(int64(o.Seed)*1000003+int64(i), o.Rate),
		}
		if d.Protocol == bus.ProtocolV2 {
			gd.v2 = wire.NewV2Key(d.Device)
		} else {
			gd.legacy = wire.NewLegacyKey(d.Device)
		}
		g.devs[i] = gd
	}
	return g
}

// Frame is one generated RAW message with what the test needs to know.
type Frame struct {
	Msg      *nats.Msg
	Device   int // index into Options.Devices
	Seq      uint64
	Received time.Time
	Reading  wire.Reading // the values sent
}

// Next returns the next message; ok is false when there are no devices.
func (g *Generator) Next() (Frame, error) {
	if len(g.devs) == 0 {
		return Frame{}, fmt.Errorf("rawgen: no devices")
	}
	if g.next == len(g.devs) {
		g.next = 0
		g.tick++
	}
	i := g.next
	g.next++
	d := &g.devs[i]
	seq := g.tick + 1
	// Devices are spread evenly over each reading interval.
	interval := time.Duration(float64(time.Second) / g.o.Rate)
	recv := g.o.Start.Add(time.Duration(g.tick)*interval + time.Duration(i)*interval/time.Duration(len(g.devs)))
	r := d.sig.Next(seq)
	simulator.EncodeSeq(&r, seq)
	msg := &nats.Msg{Header: nats.Header{}}
	msg.Header.Set(bus.HeaderConn, d.conn)
	msg.Header.Set(bus.HeaderFrameSeq, strconv.FormatUint(seq, 10))
	msg.Header.Set(bus.HeaderRemote, d.remote)
	msg.Header.Set(bus.HeaderLocal, "10.1.0.1:9998")
	msg.Header.Set(bus.HeaderReceived, recv.UTC().Format(time.RFC3339Nano))
	msg.Header.Set(bus.HeaderProtocol, d.Protocol)
	if d.v2 != nil {
		p := wire.V2Payload{Time: recv.UnixMilli(), Values: r.Numbers(), Pulse: simulator.PulseCodes(d.sig.Batch(), recv)}
		payload, err := wire.AppendV2Payload(nil, &p)
		if err != nil {
			return Frame{}, fmt.Errorf("rawgen: %w", err)
		}
		if msg.Data, err = d.v2.SealData(nil, seq, payload); err != nil {
			return Frame{}, fmt.Errorf("rawgen: %w", err)
		}
		tag := msg.Data[len(msg.Data)-wire.V2TagLen:]
		msg.Subject = bus.RawSubject(bus.Partition(d.ID, g.o.Partitions))
		msg.Header.Set(bus.HeaderDevice, d.ID)
		msg.Header.Set(jetstream.MsgIDHeader, bus.V2MsgID(d.ID, seq, tag))
	} else {
		g.plain = r.AppendJSON(g.plain[:0])
		msg.Data = d.legacy.Seal(nil, d.Variant, g.plain)
		msg.Subject = bus.RawSubject(bus.Partition(d.conn, g.o.Partitions))
		msg.Header.Set(jetstream.MsgIDHeader, d.conn+":"+strconv.FormatUint(seq, 10))
	}
	return Frame{Msg: msg, Device: i, Seq: seq, Received: recv, Reading: r}, nil
}

// Keys are the devices' keys.
func Keys(devs []Device) []wire.Device {
	out := make([]wire.Device, len(devs))
	for i, d := range devs {
		out[i] = d.Device
	}
	return out
}

// Store publishes the next n messages to JetStream, as the edge would
// (asynchronously, waiting for room), waits until all are stored and
// returns them.
func (g *Generator) Store(ctx context.Context, js jetstream.JetStream, n int) ([]Frame, error) {
	frames := make([]Frame, 0, n)
	futs := make([]jetstream.PubAckFuture, 0, n)
	for range n {
		f, err := g.Next()
		if err != nil {
			return frames, err
		}
		fut, err := js.PublishMsgAsync(f.Msg, bus.Backpressure)
		if err != nil {
			return frames, fmt.Errorf("rawgen: store: %w", err)
		}
		frames, futs = append(frames, f), append(futs, fut)
	}
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return frames, fmt.Errorf("rawgen: store: %w", err)
		case <-ctx.Done():
			return frames, ctx.Err()
		}
	}
	return frames, nil
}
