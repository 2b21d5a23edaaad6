package e2e

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/medpipe/medpipe/testkit"
)

// TestStageFaults stops one stage process mid-stream, by SIGKILL or by
// SIGTERM, and starts it again, while simulated devices send. It counts
// every reading on MQTT: none may be lost; after SIGTERM (a graceful
// drain) none may arrive twice and the drain must end within its bound;
// after SIGKILL duplicates are counted and bounded by what was in flight,
// and readings in flight may arrive a few places late.
// Ingest faults use v2 devices: only v2 readings are acknowledged to the
// device, so only they can be promised across an ingest restart (a
// legacy device's bytes in flight die with the connection).
func TestStageFaults(t *testing.T) {
	tests := []struct {
		name     string
		stage    string // ingest, decrypt or publish
		signal   syscall.Signal
		protocol string
	}{
		{"publish SIGKILL", "publish", syscall.SIGKILL, "mixed"},
		{"publish SIGTERM", "publish", syscall.SIGTERM, "mixed"},
		{"decrypt SIGTERM", "decrypt", syscall.SIGTERM, "mixed"},
		{"ingest SIGTERM", "ingest", syscall.SIGTERM, "v2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
			defer cancel()
			const devices, count, rate = 30, 200, 20
			c := newStageCluster(ctx, t, 8, devices, "flt")
			col := c.collector("Pico/+/reading", "faults")
			args := map[string][]string{
				"ingest":  {"ingest", "--listen", c.edge, "--raw-batch", rawBatched},
				"decrypt": {"decrypt", "--keys", c.keys, "--readings-batch", batched},
				"publish": {"publish", "--mqtt", c.srv.MQTTURL(), "--json-topic"},
			}
			procs := map[string]*testkit.Proc{}
			for _, s := range []string{"ingest", "decrypt", "publish"} {
				procs[s] = c.start(s, args[s]...)
			}
			// A second decrypt takes over a stopped one's partitions; the
			// other stages come back by restarting.
			if tt.stage == "decrypt" {
				c.start("decrypt-2", args["decrypt"]...)
			}
			sim := testkit.StartMedpipe(t, "simulate", nil, "simulate", "--json", "--server", c.edge, "--keys", c.keys,
				"--devices", strconv.Itoa(devices), "--count", strconv.Itoa(count), "--rate", strconv.Itoa(rate), "--protocol", tt.protocol)
			time.Sleep(3 * time.Second)

			victim := procs[tt.stage]
			faultAt := time.Now()
			if err := victim.Cmd.Process.Signal(tt.signal); err != nil {
				t.Fatal(err)
			}
			var drained time.Duration
			select {
			case <-victim.Exited():
				err := victim.Err()
				drained = time.Since(faultAt)
				if tt.signal == syscall.SIGTERM && err != nil {
					t.Fatalf("%s after SIGTERM: %v\n%s", tt.stage, err, victim.Out.String())
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("%s did not exit within 20 s of %v", tt.stage, tt.signal)
			}
			if tt.signal == syscall.SIGTERM && drained > 12*time.Second {
				t.Errorf("%s drained in %v, over its 10 s bound", tt.stage, drained)
			}
			if tt.stage != "decrypt" {
				time.Sleep(time.Second)
				c.start(tt.stage+"-again", args[tt.stage]...)
			}
			summary := simulated(ctx, t, sim)
			if summary.Sent != devices*count {
				t.Fatalf("simulator sent %d readings, want %d", summary.Sent, devices*count)
			}
			simDone := time.Now()
			order, dups := waitAllReadings(ctx, t, col, devices*count)
			t.Logf("%s: sent %d, received %d distinct, lost 0, duplicated %d; stage exited %v after the signal; last reading %v after the devices' last send",
				tt.name, summary.Sent, devices*count, dups, drained.Round(time.Millisecond), time.Since(simDone).Round(100*time.Millisecond))
			if tt.signal == syscall.SIGTERM {
				assertFewDuplicates(t, dups, devices*count)
			}
			// After SIGKILL, what was in flight can come again: at most the
			// publish window (512 readings per partition, 8 partitions).
			if dups > 8*512 {
				t.Errorf("%d duplicates: more than could have been in flight", dups)
			}
			if tt.signal == syscall.SIGTERM {
				assertInOrder(t, order)
				return
			}
			// A reading in flight at the kill may reach the broker only when
			// the new process publishes it again, after a newer one the old
			// process got through (seen 1 place, in 5 of 30 devices, under CI
			// load; the MQTT session that held it died with the process).
			reordered, worst := assertDisplacement(t, order, maxDisplacement)
			t.Logf("%d of %d devices with readings out of order, at most %d places", reordered, devices, worst)
		})
	}
}
