package replay

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/publish"
	"github.com/medpipe/medpipe/sink"
	"github.com/medpipe/medpipe/wire"
)

// JSONLines writes one READINGS-shaped JSON object per reading and line
// (device, values, numbers, received, device_time for v2, raw_seq, …).
type JSONLines struct {
	w *bufio.Writer
}

// NewJSONLines writes to w.
func NewJSONLines(w io.Writer) *JSONLines { return &JSONLines{w: bufio.NewWriterSize(w, 64<<10)} }

// Connect does nothing: the writer is open.
func (j *JSONLines) Connect(context.Context) error { return nil }

// WriteBatch writes one line per reading; the ack is complete.
func (j *JSONLines) WriteBatch(ctx context.Context, batch []*bus.Reading) (sink.Ack, error) {
	for _, r := range batch {
		if err := j.write(r); err != nil {
			return nil, err
		}
	}
	return sink.Done(nil), nil
}

func (j *JSONLines) write(r *bus.Reading) error {
	b, err := bus.MarshalReading(r)
	if err != nil {
		return fmt.Errorf("replay: encode reading: %w", err)
	}
	b = append(b, '\n')
	if _, err := j.w.Write(b); err != nil {
		return fmt.Errorf("replay: write: %w", err)
	}
	return nil
}

// Close flushes.
func (j *JSONLines) Close(context.Context) error {
	if err := j.w.Flush(); err != nil {
		return fmt.Errorf("replay: write: %w", err)
	}
	return nil
}

// CSVHeader is the first row CSV writes.
var CSVHeader = func() []string {
	h := []string{"device", "received", "device_time", "protocol", "variant", "raw_seq", "device_seq"}
	for f := range wire.Field(wire.NumFields) { // the reading's fields, in wire's order
		h = append(h, f.Name())
	}
	return h
}()

// CSV writes one row per reading: device, receive time, device time (v2
// devices only: legacy ones send none), protocol, sequence numbers and the
// seven values as the device sent them.
type CSV struct {
	w      *csv.Writer
	header bool
	row    []string
}

// NewCSV writes to w.
func NewCSV(w io.Writer) *CSV { return &CSV{w: csv.NewWriter(w), row: make([]string, len(CSVHeader))} }

// Connect does nothing: the writer is open.
func (c *CSV) Connect(context.Context) error { return nil }

// WriteBatch writes one row per reading (after the header row); the ack is complete.
func (c *CSV) WriteBatch(ctx context.Context, batch []*bus.Reading) (sink.Ack, error) {
	for _, r := range batch {
		if err := c.write(r); err != nil {
			return nil, err
		}
	}
	return sink.Done(nil), nil
}

func (c *CSV) write(r *bus.Reading) error {
	if !c.header {
		c.header = true
		if err := c.w.Write(CSVHeader); err != nil {
			return fmt.Errorf("replay: write: %w", err)
		}
	}
	dt, seq := "", ""
	if !r.DeviceTime.IsZero() {
		dt = r.DeviceTime.UTC().Format(time.RFC3339Nano)
	}
	if r.Seq != 0 {
		seq = strconv.FormatUint(r.Seq, 10)
	}
	values := r.Values.Wire()
	row := append(c.row[:0], r.Device, r.Received.UTC().Format(time.RFC3339Nano), dt, r.Protocol, r.Variant,
		strconv.FormatUint(r.RawSeq, 10), seq)
	row = append(row, values[:]...)
	if err := c.w.Write(row); err != nil {
		return fmt.Errorf("replay: write: %w", err)
	}
	return nil
}

// Close flushes.
func (c *CSV) Close(context.Context) error {
	c.w.Flush()
	if err := c.w.Error(); err != nil {
		return fmt.Errorf("replay: write: %w", err)
	}
	return nil
}

// DefaultPrefix is where replayed readings go on MQTT unless asked
// otherwise: not the live topics, so that dashboards are not fooled.
const DefaultPrefix = bus.DefaultReplayTopicPrefix + "/" + publish.DefaultPrefix
