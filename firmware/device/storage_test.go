package device

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/medpipe/medpipe/firmware/hwfake"
	"github.com/medpipe/medpipe/wire"
)

func storageConfig(ssid string) Config {
	return Config{WiFiSSID: ssid, WiFiPassword: "wpa2-passphrase", Server: "medpipe.example", Port: 9998, Protocol: ProtocolV2,
		Device: wire.Device{ID: "bed-3", Key: [16]byte([]byte("k3y-of-bed3-0016")), IV: [16]byte([]byte("iv-of-bed3-00016"))}}
}

// TestBootEpochWearLevelled: one program per boot, and each boot sector
// is erased once per bootSlots-1 boots or so, alternating: 1,000 boots
// cost 3 erases per sector, and the configuration sectors none.
func TestBootEpochWearLevelled(t *testing.T) {
	fl := hwfake.NewFlash(StorageSize)
	cfg := storageConfig("ward-7")
	if err := SaveConfig(fl, &cfg); err != nil {
		t.Fatal(err)
	}
	before := fl.Steps()
	for boot := uint32(1); boot <= 1000; boot++ {
		e, err := NextBootEpoch(fl)
		if err != nil || e != boot {
			t.Fatalf("boot %d: epoch %d, %v", boot, e, err)
		}
	}
	erases := fl.Erases()
	t.Logf("1,000 boots: %d flash operations, erases per sector %v", fl.Steps()-before, erases)
	if ops := fl.Steps() - before; ops > 1000+10 {
		t.Errorf("1,000 boots took %d flash operations", ops)
	}
	if erases[configOffsetA/SectorSize] != 1 || erases[configOffsetB/SectorSize] != 0 {
		t.Errorf("the configuration sectors were erased by boots: %v", erases)
	}
	for _, sec := range []int{bootOffsetA / SectorSize, bootOffsetB / SectorSize} {
		if erases[sec] > 1000/(bootSlots-1)+1 {
			t.Errorf("boot sector %d erased %d times", sec, erases[sec])
		}
	}
	if got, err := LoadConfig(fl); err != nil || got != cfg {
		t.Fatalf("configuration after 1,000 boots: %+v, %v", got, err)
	}
}

// TestFlashSurvivesPowerCutAtEveryStep runs boots (crossing from one boot
// sector to the other and back) and a configuration change, cutting power
// in turn during each erase and program of the run. After every cut the
// configuration is the old or the new one, never gone, and every epoch a
// boot used stays below every later one: the v2 sequence never goes back.
func TestFlashSurvivesPowerCutAtEveryStep(t *testing.T) {
	oldCfg, newCfg := storageConfig("ward-7"), storageConfig("ward-8")
	// A scenario from a state where the active boot sector is nearly full.
	prepare := func(t *testing.T) *hwfake.Flash {
		fl := hwfake.NewFlash(StorageSize)
		if err := SaveConfig(fl, &oldCfg); err != nil {
			t.Fatal(err)
		}
		for range bootSlots - 3 {
			if _, err := NextBootEpoch(fl); err != nil {
				t.Fatal(err)
			}
		}
		return fl
	}
	const boots = bootSlots + 8 // through both sector switches
	run := func(fl *hwfake.Flash, used *uint32, savedNew *bool) error {
		for i := range boots {
			if i == 5 {
				if err := SaveConfig(fl, &newCfg); err != nil {
					return err
				}
				*savedNew = true
			}
			e, err := NextBootEpoch(fl)
			if err != nil {
				return err
			}
			if e <= *used {
				return errors.New("epoch went back")
			}
			*used = e
		}
		return nil
	}
	// The full run without cuts counts the steps.
	ref := prepare(t)
	start := ref.Steps()
	var used uint32
	var saved bool
	if err := run(ref, &used, &saved); err != nil {
		t.Fatal(err)
	}
	steps := ref.Steps() - start
	t.Logf("%d erase/program steps in the run; cutting power in each", steps)
	for cut := 1; cut <= steps; cut++ {
		fl := prepare(t)
		var used uint32
		var savedNew bool
		fl.CutPowerAfter(cut)
		err := run(fl, &used, &savedNew)
		if !errors.Is(err, hwfake.ErrPowerCut) {
			t.Fatalf("cut %d: run ended with %v", cut, err)
		}
		fl.PowerOn()
		cfg, err := LoadConfig(fl)
		if err != nil {
			t.Fatalf("cut %d: configuration lost: %v", cut, err)
		}
		if cfg != oldCfg && cfg != newCfg || savedNew && cfg != newCfg {
			t.Fatalf("cut %d: configuration %q (saved new: %v)", cut, cfg.WiFiSSID, savedNew)
		}
		// The next boots go on above every epoch used before the cut.
		for range 3 {
			e, err := NextBootEpoch(fl)
			if err != nil {
				t.Fatalf("cut %d: boot after power on: %v", cut, err)
			}
			if e <= used {
				t.Fatalf("cut %d: epoch %d after %d was used: the sequence went back", cut, e, used)
			}
			used = e
		}
	}
}

// TestFlashRefusesProgramOverData: the fake keeps a real part's rule, so
// a record written without an erase fails loudly instead of corrupting.
func TestFlashRefusesProgramOverData(t *testing.T) {
	fl := hwfake.NewFlash(StorageSize)
	if _, err := fl.WriteAt([]byte{0x0F}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := fl.WriteAt([]byte{0xF0}, 0); err == nil {
		t.Fatal("programmed 0 bits back to 1 without an erase")
	}
	if err := fl.EraseSector(100); err == nil {
		t.Fatal("erased at an offset that is not a sector")
	}
}

// fakeWatchdog counts feeds.
type fakeWatchdog struct {
	mu      sync.Mutex
	started bool
	feeds   int
}

func (w *fakeWatchdog) Start() { w.mu.Lock(); w.started = true; w.mu.Unlock() }
func (w *fakeWatchdog) Feed()  { w.mu.Lock(); w.feeds++; w.mu.Unlock() }
func (w *fakeWatchdog) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.feeds
}

// TestWatchdogFedOnlyWhileMainLoopChecksIn: the watchdog is fed while the
// main loop checks in, and no longer once it stops (a hung loop): then the
// hardware resets the chip.
func TestWatchdogFedOnlyWhileMainLoopChecksIn(t *testing.T) {
	wd := &fakeWatchdog{}
	d := &Device{b: &Board{Watchdog: wd}}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go d.watch(ctx)
	deadline := time.Now().Add(30 * time.Second)
	for wd.count() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the watchdog was not fed within 30 s of check-ins")
		}
		d.alive()
		time.Sleep(100 * time.Millisecond)
	}
	// The loop hangs: its last check-in expires.
	d.due.Store(time.Now().UnixNano())
	time.Sleep(2 * feedEvery)
	before := wd.count()
	time.Sleep(3 * feedEvery)
	if after := wd.count(); after != before {
		t.Fatalf("fed %d times after the main loop stopped checking in", after-before)
	}
}
