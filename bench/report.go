package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

func numCPU() int { return runtime.NumCPU() }

// write stores report.md, report.json and the plots of the last result in dir.
func (r *Report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	var md strings.Builder
	r.Markdown(&md)
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	if len(r.Results) == 0 {
		return nil
	}
	return plots(r.Results[len(r.Results)-1], dir)
}

// Markdown writes the report as Markdown.
func (r *Report) Markdown(w io.Writer) {
	fmt.Fprintf(w, "# medpipe bench, %s\n\nMachine: %s. Everything (servers, stages, simulator, subscriber) on this machine.\n\n", r.Started.Format("2006-01-02 15:04 UTC"), r.Machine)
	if len(r.Results) > 0 && r.Results[0].Drain != nil {
		r.drainMarkdown(w)
		return
	}
	fmt.Fprintln(w, "| mode | devices × rate | layout, QoS | offered/s | delivered/s | undelivered | dup | reordered | p50 | p90 | p99 | p99.9 | max | frames in/s | readings out/s | MQTT msgs/s | RAW B/frame | ceiling (bottleneck) | ratio |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
	for _, x := range r.Results {
		ceil, ratio := "not measured", ""
		if x.CeilingError != "" {
			ceil = "failed: " + x.CeilingError
		}
		if x.Ceilings != nil {
			ceil = fmt.Sprintf("%.0f/s (%s)", x.Ceilings.BottleneckPerSec, x.Ceilings.Bottleneck)
			ratio = fmt.Sprintf("%.0f%%", 100*x.Ratio)
		}
		fmt.Fprintf(w, "| %s | %d × %g/s | %s, %d | %.0f | %.0f | %d | %d | %d | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.0f | %.0f | %.0f | %.0f | %s | %s |\n",
			x.Mode, x.Devices, x.Rate, x.Layout, x.QoS, x.Offered, x.Delivered, x.Totals.Lost, x.Totals.Duplicated, x.Totals.Reordered,
			x.Latency.P50, x.Latency.P90, x.Latency.P99, x.Latency.P999, x.Latency.Max, x.FramesIn, x.ReadingsOut, x.MQTTMessages, x.RawBytesPerFrame, ceil, ratio)
	}
	fmt.Fprintln(w, "\ndelivered/s counts readings sent inside the window that reached MQTT; undelivered is what had not reached MQTT when the drain bound ended the run (lost, or still queued in JetStream behind a saturated stage); latencies are from the device's write to the MQTT subscriber.")
	if r.MaxHeld > 0 {
		fmt.Fprintf(w, "\nSweep: the highest rate that held (nothing lost, p99 within the bound) was %g readings/s per device.\n", r.MaxHeld)
	}
	for _, x := range r.Results {
		if len(x.Totals.LostSample) > 0 {
			fmt.Fprintf(w, "\nUndelivered at %d × %g/s, first ones (device:reading): %s.\n", x.Devices, x.Rate, strings.Join(x.Totals.LostSample, ", "))
		}
		if len(x.Totals.ReorderedSample) > 0 {
			fmt.Fprintf(w, "\nReadings that arrived after a later one at %d × %g/s, first per device (device:reading): %s.\n", x.Devices, x.Rate, strings.Join(x.Totals.ReorderedSample, ", "))
		}
		if x.Ceilings != nil {
			c := x.Ceilings
			fmt.Fprintf(w, "\nCeilings at %d × %g/s: JetStream %.0f publishes/s and %.0f acked consumes/s (%.0f readings/s at 2 stored messages each); MQTT %.0f messages/s at QoS %d (%.0f readings/s at %d messages each).\n",
				x.Devices, x.Rate, c.JSPublishPerSec, c.JSConsumePerSec, c.JSReadingsPerSec, c.MQTTPerSec, x.QoS, c.MQTTReadingsPerSec, msgsPerReading(x.Layout))
		}
		fmt.Fprintf(w, "\nCPU at %d × %g/s: over the whole run, and over the measured window per reading out of decrypt (%.0f/s; for ingest, nearly per frame in):\n\n| process | CPU s, run | CPU s, window | µs per reading | peak RSS |\n|---|---:|---:|---:|---:|\n", x.Devices, x.Rate, x.ReadingsOut)
		win := map[string]float64{}
		for _, u := range x.WindowUsage {
			win[u.Name] = u.CPUSeconds
		}
		for _, u := range x.Usage {
			us := "—"
			if n := x.ReadingsOut * x.Seconds; n > 0 {
				us = fmt.Sprintf("%.0f", 1e6*win[u.Name]/n)
			}
			fmt.Fprintf(w, "| %s | %.1f | %.1f | %s | %.0f MB |\n", u.Name, u.CPUSeconds, win[u.Name], us, u.PeakRSSMB)
		}
	}
}

// plots draws throughput and latency percentiles per second, and the
// latency CDF, of one result.
func plots(x Result, dir string) error {
	if len(x.Series) == 0 {
		return nil
	}
	thr, p50, p99 := make(plotter.XYs, len(x.Series)), make(plotter.XYs, len(x.Series)), make(plotter.XYs, len(x.Series))
	for i, s := range x.Series {
		thr[i] = plotter.XY{X: float64(i), Y: float64(s.Delivered)}
		p50[i] = plotter.XY{X: float64(i), Y: s.P50}
		p99[i] = plotter.XY{X: float64(i), Y: s.P99}
	}
	title := fmt.Sprintf("%s, %d devices × %g/s, %s QoS %d", x.Mode, x.Devices, x.Rate, x.Layout, x.QoS)
	p := plot.New()
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = "Readings delivered per second — "+title, "second of the window", "readings/s"
	if err := plotutil.AddLines(p, "delivered", thr); err != nil {
		return err
	}
	if err := p.Save(8*vg.Inch, 4*vg.Inch, filepath.Join(dir, "throughput.png")); err != nil {
		return err
	}
	p = plot.New()
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = "End-to-end latency — "+title, "second of the window", "ms"
	if err := plotutil.AddLines(p, "p50", p50, "p99", p99); err != nil {
		return err
	}
	if err := p.Save(8*vg.Inch, 4*vg.Inch, filepath.Join(dir, "latency.png")); err != nil {
		return err
	}
	cdf := make(plotter.XYs, len(x.cdf))
	for i, pt := range x.cdf {
		cdf[i] = plotter.XY{X: pt[0], Y: pt[1]}
	}
	p = plot.New()
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = "Latency CDF — "+title, "ms", "fraction of readings"
	if err := plotutil.AddLines(p, "CDF", cdf); err != nil {
		return err
	}
	return p.Save(8*vg.Inch, 4*vg.Inch, filepath.Join(dir, "latency-cdf.png"))
}

// Compare writes, per result of r, the change against the result of old
// with the same mode, devices, rate, layout and QoS.
func Compare(w io.Writer, old, r *Report) {
	key := func(x Result) string {
		return fmt.Sprintf("%s %d×%g %s q%d", x.Mode, x.Devices, x.Rate, x.Layout, x.QoS)
	}
	prev := map[string]Result{}
	for _, x := range old.Results {
		prev[key(x)] = x
	}
	pct := func(a, b float64) string {
		if a == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%+.1f%%", 100*(b-a)/a)
	}
	fmt.Fprintln(w, "| scenario | delivered/s | p50 | p99 | lost | dup |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, x := range r.Results {
		o, ok := prev[key(x)]
		if !ok {
			fmt.Fprintf(w, "| %s | new | | | | |\n", key(x))
			continue
		}
		fmt.Fprintf(w, "| %s | %.0f → %.0f (%s) | %.1f → %.1f ms (%s) | %.1f → %.1f ms (%s) | %d → %d | %d → %d |\n", key(x),
			o.Delivered, x.Delivered, pct(o.Delivered, x.Delivered), o.Latency.P50, x.Latency.P50, pct(o.Latency.P50, x.Latency.P50),
			o.Latency.P99, x.Latency.P99, pct(o.Latency.P99, x.Latency.P99), o.Totals.Lost, x.Totals.Lost, o.Totals.Duplicated, x.Totals.Duplicated)
	}
}

// ReadReport loads a report.json.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("bench: %s: %w", path, err)
	}
	return &r, nil
}

// drainMarkdown writes the drain scenario's figures.
func (r *Report) drainMarkdown(w io.Writer) {
	for _, x := range r.Results {
		d := x.Drain
		fmt.Fprintf(w, "Drain: %d legacy frames from %d devices, stored in RAW first, drained by decrypt and publish (a process each) into %s at QoS %d, one JSON message per reading.\n\n", d.Frames, x.Devices, d.Broker, x.QoS)
		fmt.Fprintln(w, "| readings | seconds to the last at the subscriber | readings/s | seconds to the last handed to the broker | readings/s | CPU s per 1,000 readings (servers and stages) | undelivered | dup | reordered |")
		fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		fmt.Fprintf(w, "| %d | %.2f | %.0f | %.2f | %.0f | %.3f | %d | %d | %d |\n", x.Totals.Delivered, d.Seconds, d.PerSec, d.PublishedSeconds, d.PublishedPerSec, d.CPUPer1000, x.Totals.Lost, x.Totals.Duplicated, x.Totals.Reordered)
		fmt.Fprintln(w, "\nCPU over the drain, by process (the bench's MQTT subscriber, which counts every reading, is not in the per-1,000 figure):\n\n| process | CPU s | µs per reading | peak RSS |\n|---|---:|---:|---:|")
		for _, u := range d.Usage {
			us := "—"
			if v, ok := d.MicrosPerReading[u.Name]; ok {
				us = fmt.Sprintf("%.1f", v)
			}
			fmt.Fprintf(w, "| %s | %.2f | %s | %.0f MB |\n", u.Name, u.CPUSeconds, us, u.PeakRSSMB)
		}
	}
}
