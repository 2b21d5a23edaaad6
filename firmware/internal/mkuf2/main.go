// Command mkuf2 turns the firmware's linked ELF into the UF2 file a person
// copies onto the Pico in BOOTSEL mode, with a factory block (per-device
// secrets, package provision) in the same file: one copy flashes a device
// that can run. firmware/tinygo.sh runs it.
//
//	go run ./internal/mkuf2 -elf build/medpipe-pico.elf -factory bed-3.uf2 -o build/medpipe-pico.uf2
//	go run ./internal/mkuf2 -elf build/medpipe-pico.elf -bench-defaults -o build/medpipe-pico.uf2
package main

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/medpipe/medpipe/provision"
)

// bench is the factory block of a bench build: published with the source,
// for a developer's Pico on a desk, never for a device on a patient.
var bench = provision.Factory{Serial: "bench", APPassword: "medpipe-bench",
	ProvisioningKey: [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}}

func main() {
	elfPath := flag.String("elf", "", "the linked firmware")
	factory := flag.String("factory", "", "the device's factory block (medpipe keys add ID --firmware-config FILE; .uf2 or raw)")
	benchDefaults := flag.Bool("bench-defaults", false, "use the published bench secrets instead of a device's factory block")
	out := flag.String("o", "", "the UF2 to write")
	flag.Parse()
	if err := run(*elfPath, *factory, *benchDefaults, *out); err != nil {
		fmt.Fprintln(os.Stderr, "mkuf2:", err)
		os.Exit(1)
	}
}

func run(elfPath, factory string, benchDefaults bool, out string) error {
	if elfPath == "" || out == "" {
		return errors.New("-elf and -o are required")
	}
	var f provision.Factory
	switch {
	case factory != "" && benchDefaults:
		return errors.New("-factory and -bench-defaults exclude each other")
	case factory != "":
		b, err := os.ReadFile(factory)
		if err != nil {
			return err
		}
		if strings.HasSuffix(strings.ToLower(factory), ".uf2") {
			if b, err = provision.ReadUF2(b, provision.FactoryAddr, provision.SectorSize); err != nil {
				return err
			}
		}
		if f, err = provision.Parse(b); err != nil {
			return fmt.Errorf("%s: %w", factory, err)
		}
	case benchDefaults:
		f = bench
	default:
		return errors.New("no per-device secrets: give -factory FILE (medpipe keys add ID --firmware-config FILE) or, for a bench Pico, -bench-defaults")
	}
	addr, rom, err := readROM(elfPath)
	if err != nil {
		return err
	}
	if end := addr + uint32(len(rom)); end > provision.RegionAddr {
		return fmt.Errorf("the image ends at %#x, inside the storage region at %#x", end, provision.RegionAddr)
	}
	block, err := f.Append(nil)
	if err != nil {
		return err
	}
	u := provision.AppendUF2(nil, addr, rom)
	u = provision.AppendUF2(u, provision.FactoryAddr, block)
	renumber(u)
	return os.WriteFile(out, u, 0o600)
}

// readROM returns what the ELF's loadable segments put in flash, from the
// lowest load address on (as TinyGo's own UF2 conversion does).
func readROM(path string) (uint32, []byte, error) {
	f, err := elf.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	var progs []*elf.Prog
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Filesz > 0 && p.Off > 0 {
			progs = append(progs, p)
		}
	}
	if len(progs) == 0 {
		return 0, nil, errors.New("no loadable segments")
	}
	sort.Slice(progs, func(i, j int) bool { return progs[i].Paddr < progs[j].Paddr })
	start := progs[0].Paddr
	if start < provision.FlashBase || start >= provision.FlashBase+provision.FlashSize {
		return 0, nil, fmt.Errorf("image starts at %#x, not in flash", start)
	}
	var rom []byte
	for _, p := range progs {
		at := p.Paddr - start
		if at < uint64(len(rom)) {
			return 0, nil, fmt.Errorf("segments overlap at %#x", p.Paddr)
		}
		if at-uint64(len(rom)) > 4096 {
			return 0, nil, fmt.Errorf("a gap of %d bytes before %#x", at-uint64(len(rom)), p.Paddr)
		}
		rom = append(rom, make([]byte, at-uint64(len(rom)))...)
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return 0, nil, err
		}
		rom = append(rom, b...)
	}
	return uint32(start), rom, nil
}

// renumber sets every block's number and the total: the boot ROM reboots
// once it has all of them.
func renumber(u []byte) {
	n := len(u) / 512
	for i := range n {
		binary.LittleEndian.PutUint32(u[i*512+20:], uint32(i))
		binary.LittleEndian.PutUint32(u[i*512+24:], uint32(n))
	}
}
