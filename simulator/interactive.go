package simulator

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/medpipe/medpipe/wire"
)

// Interactive is the hands-on single device: it streams readings like any
// simulated device while an operator changes the values from the numbered
// menu of the old desktop simulator.
type Interactive struct {
	mu        sync.Mutex
	values    [NumSettable]float64
	fallUntil time.Time
}

// The values the menu sets, in menu order.
const (
	setTemp = iota
	setMcu
	setMpu
	setX
	setY
	setZ
	NumSettable // number of values the menu sets
)

var settableFields = [NumSettable]wire.Field{wire.Temp, wire.TempMcu, wire.TempMpu, wire.AcelX, wire.AcelY, wire.AcelZ}

// menu lists the options: option 2k+1 raises value k, 2k+2 lowers it.
// Each label's unit is the field table's.
var menu = [NumSettable]struct {
	name string
	step float64
	wrap bool // the accelerometer wraps at ±1 g
}{
	{"Patient temperature", 0.5, false},
	{"MCU temperature", 0.5, false},
	{"MPU temperature", 0.5, false},
	{"Accelerometer x", 0.1, true},
	{"Accelerometer y", 0.1, true},
	{"Accelerometer z", 0.1, true},
}

// NewInteractive starts from the old simulator's values.
func NewInteractive() *Interactive {
	return &Interactive{values: [NumSettable]float64{36.6, 23.7, 23.4, 0, 0, 0}}
}

// Adjust writes the operator's values into a reading (Options.Adjust).
func (in *Interactive) Adjust(r *wire.Reading) {
	in.mu.Lock()
	defer in.mu.Unlock()
	falling := time.Now().Before(in.fallUntil)
	for i, f := range settableFields {
		if falling && i >= setX {
			continue // the fall's own accelerometer readings
		}
		r[f] = wire.FormatValue(in.values[i])
	}
}

// fall makes the device's wearer fall; the menu's accelerometer settings
// give way to the fall's readings for the next minute.
func (in *Interactive) fall(f *Fleet) {
	f.Fall(0)
	in.mu.Lock()
	in.fallUntil = time.Now().Add(time.Minute)
	in.mu.Unlock()
}

// apply carries out menu option n (1-12).
func (in *Interactive) apply(n int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	k := (n - 1) / 2
	step := menu[k].step
	if n%2 == 0 {
		step = -step
	}
	v := in.values[k] + step
	if menu[k].wrap {
		switch {
		case v > 1.0001:
			v = -1
		case v < -1.0001:
			v = 1
		}
	}
	// Round to the step so that repeated changes do not accumulate float error.
	in.values[k] = float64(int64(v*10+sign(v)*0.5)) / 10
}

func sign(v float64) float64 {
	if v < 0 {
		return -1
	}
	return 1
}

func (in *Interactive) line() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return fmt.Sprintf("Temp %s °C · MCU %s · MPU %s · x %s y %s z %s",
		wire.FormatValue(in.values[setTemp]), wire.FormatValue(in.values[setMcu]), wire.FormatValue(in.values[setMpu]),
		wire.FormatValue(in.values[setX]), wire.FormatValue(in.values[setY]), wire.FormatValue(in.values[setZ]))
}

func printMenu(out io.Writer) {
	fmt.Fprintln(out, "Options:")
	for k, m := range menu {
		name := m.name + " (" + wire.Fields[settableFields[k]].Unit + ")"
		fmt.Fprintf(out, "  %2d) %s +%g    %2d) %s -%g\n", 2*k+1, name, m.step, 2*k+2, name, m.step)
	}
	fmt.Fprintln(out, "   f) the wearer falls")
	fmt.Fprintln(out, "   q) quit")
}

// Run streams the device of f (a one-device fleet built with Adjust set to
// in.Adjust) while reading menu choices from input. Every few seconds, and
// after each choice, it prints what is being sent and, for v2, how many
// readings the edge acknowledged. It returns when input ends, on "q", or
// when ctx ends.
func (in *Interactive) Run(ctx context.Context, f *Fleet, input io.Reader, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var outMu sync.Mutex
	say := func(format string, a ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(out, format, a...)
	}
	status := func() string {
		st := f.Stats()
		s := fmt.Sprintf("sending %s | sent %d", in.line(), st.Sent)
		if f.o.Devices[0].V2 {
			s += fmt.Sprintf(", acknowledged %d", st.Acked)
		}
		if st.Connected == 0 {
			s += " | not connected"
		}
		return s
	}
	go func() {
		t := time.NewTicker(3 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				say("\n%s\n> ", status())
			}
		}
	}()
	outMu.Lock()
	printMenu(out)
	fmt.Fprint(out, "> ")
	outMu.Unlock()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(input)
		for sc.Scan() {
			lines <- strings.TrimSpace(sc.Text())
		}
		close(lines)
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-done:
			return err
		case l, ok := <-lines:
			if l == "f" {
				in.fall(f)
				say("the wearer falls\n%s\n> ", status())
				continue
			}
			if !ok || l == "q" {
				cancel()
				<-done
				return nil
			}
			n, err := strconv.Atoi(l)
			if err != nil || n < 1 || n > 2*NumSettable {
				say("invalid option %q: choose 1 to %d, or q to quit\n> ", l, 2*NumSettable)
				continue
			}
			in.apply(n)
			say("%s\n> ", status())
		}
	}
}
