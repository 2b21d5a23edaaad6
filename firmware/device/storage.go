package device

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/url"

	"github.com/medpipe/medpipe/provision"
)

// The storage region (provision.RegionSize bytes at the end of flash) in
// 4 KiB sectors: the factory block the operator writes, then the
// configuration in two sectors (A/B: a save erases and writes the older
// one, so power lost mid-save leaves the other), then the boot records in
// two sectors (a log of small records, wear-levelled: one program per
// boot, one erase per 255 boots, alternating sectors).
const (
	SectorSize     = provision.SectorSize
	StorageSize    = provision.RegionSize
	FactoryOffset  = provision.FactoryOffset
	configOffsetA  = 1 * SectorSize
	configOffsetB  = 2 * SectorSize
	bootOffsetA    = 3 * SectorSize
	bootOffsetB    = 4 * SectorSize
	configMagic    = "MPC2"
	configHead     = 4 + 4 + 2 // magic, generation, length
	ConfigSize     = 1024      // the most a configuration record takes
	bootMagic      = "MPB1"
	bootRecordSize = 16 // magic, epoch, ^epoch, CRC-32
	bootSlots      = SectorSize / bootRecordSize
)

// Storage is the flash region the board reserves for the device, with a
// real flash's rules: WriteAt programs bytes that must be erased (0xFF),
// EraseSector erases the SectorSize bytes at a multiple of SectorSize.
type Storage interface {
	io.ReaderAt
	io.WriterAt
	EraseSector(off int64) error
}

// ErrNoConfig means flash holds no valid configuration (a new device, or
// both records damaged).
var ErrNoConfig = errors.New("device: no configuration stored")

// LoadFactory reads the factory block the operator wrote
// (medpipe keys add --firmware-config).
func LoadFactory(s Storage) (provision.Factory, error) {
	b := make([]byte, 256)
	if _, err := s.ReadAt(b, FactoryOffset); err != nil {
		return provision.Factory{}, err
	}
	return provision.Parse(b)
}

// configRecord reads the record of the configuration sector at off: its
// generation and values, ok false when it is absent or damaged.
func configRecord(s Storage, off int64) (gen uint32, v url.Values, ok bool, err error) {
	rec := make([]byte, ConfigSize)
	if _, err := s.ReadAt(rec, off); err != nil {
		return 0, nil, false, err
	}
	n := int(binary.BigEndian.Uint16(rec[8:]))
	if string(rec[:4]) != configMagic || configHead+n+4 > ConfigSize {
		return 0, nil, false, nil
	}
	if crc32.ChecksumIEEE(rec[:configHead+n]) != binary.BigEndian.Uint32(rec[configHead+n:]) {
		return 0, nil, false, nil
	}
	v, perr := url.ParseQuery(string(rec[configHead : configHead+n]))
	if perr != nil {
		return 0, nil, false, nil
	}
	return binary.BigEndian.Uint32(rec[4:]), v, true, nil
}

// currentConfig finds the newer valid configuration record.
func currentConfig(s Storage) (off int64, gen uint32, v url.Values, ok bool, err error) {
	for _, o := range []int64{configOffsetA, configOffsetB} {
		g, val, good, err := configRecord(s, o)
		if err != nil {
			return 0, 0, nil, false, err
		}
		// Generations only grow by one per save; compare them as a serial
		// number so that the wrap at 2^32 keeps the newer one.
		if good && (!ok || int32(g-gen) > 0) {
			off, gen, v, ok = o, g, val, true
		}
	}
	return off, gen, v, ok, nil
}

// LoadConfig reads the configuration from flash.
func LoadConfig(s Storage) (Config, error) {
	_, _, v, ok, err := currentConfig(s)
	if err != nil {
		return Config{}, err
	}
	if !ok {
		return Config{}, ErrNoConfig
	}
	return ParseConfig(v)
}

// SaveConfig writes c into the configuration sector not holding the
// current record (erase, program, read back), with the next generation:
// until the program completes, the current record stays the one loaded.
func SaveConfig(s Storage, c *Config) error {
	payload := c.Values().Encode()
	if configHead+len(payload)+4 > ConfigSize {
		return fmt.Errorf("%w: too long to store", ErrConfig)
	}
	cur, gen, _, ok, err := currentConfig(s)
	if err != nil {
		return err
	}
	target := int64(configOffsetA)
	if ok && cur == configOffsetA {
		target = configOffsetB
	}
	rec := make([]byte, 0, ConfigSize)
	rec = append(rec, configMagic...)
	rec = binary.BigEndian.AppendUint32(rec, gen+1)
	rec = binary.BigEndian.AppendUint16(rec, uint16(len(payload)))
	rec = append(rec, payload...)
	rec = binary.BigEndian.AppendUint32(rec, crc32.ChecksumIEEE(rec))
	if err := s.EraseSector(target); err != nil {
		return fmt.Errorf("device: erase configuration sector: %w", err)
	}
	if _, err := s.WriteAt(rec, target); err != nil {
		return fmt.Errorf("device: program configuration: %w", err)
	}
	back := make([]byte, len(rec))
	if _, err := s.ReadAt(back, target); err != nil {
		return err
	}
	if string(back) != string(rec) {
		return errors.New("device: configuration did not program correctly (worn flash?)")
	}
	return nil
}

// bootRecord encodes epoch's record.
func bootRecord(epoch uint32) [bootRecordSize]byte {
	var r [bootRecordSize]byte
	copy(r[:], bootMagic)
	binary.BigEndian.PutUint32(r[4:], epoch)
	binary.BigEndian.PutUint32(r[8:], ^epoch)
	binary.BigEndian.PutUint32(r[12:], crc32.ChecksumIEEE(r[:12]))
	return r
}

// parseBootRecord reads one slot: used reports that it is not erased, ok
// that it holds a valid record.
func parseBootRecord(r []byte) (epoch uint32, used, ok bool) {
	for _, c := range r {
		if c != 0xFF {
			used = true
			break
		}
	}
	if !used || string(r[:4]) != bootMagic || crc32.ChecksumIEEE(r[:12]) != binary.BigEndian.Uint32(r[12:]) {
		return 0, used, false
	}
	epoch = binary.BigEndian.Uint32(r[4:])
	if binary.BigEndian.Uint32(r[8:]) != ^epoch {
		return 0, used, false
	}
	return epoch, used, true
}

// NextBootEpoch records and returns the next boot epoch: one more than the
// highest valid record of either boot sector (1 on a new device). It is
// the high half of every v2 sequence number of this boot, so it is used
// only once its record is programmed and read back: power lost before
// that leaves the old highest record, and the next boot records the same
// epoch this one would have, which was never used. The record goes into
// the first free slot after the last used one of the sector holding the
// highest record; when that sector is full the other is erased first (the
// highest record stays in the full one until the new one is written).
func NextBootEpoch(s Storage) (uint32, error) {
	var sec [2][SectorSize]byte
	offs := [2]int64{bootOffsetA, bootOffsetB}
	var max uint32
	cur, found := 0, false
	var next [2]int // first slot after the last used one
	for i, off := range offs {
		if _, err := s.ReadAt(sec[i][:], off); err != nil {
			return 0, err
		}
		for slot := range bootSlots {
			e, used, ok := parseBootRecord(sec[i][slot*bootRecordSize : (slot+1)*bootRecordSize])
			if used {
				next[i] = slot + 1
			}
			if ok && (!found || e > max) {
				max, cur, found = e, i, true
			}
		}
	}
	epoch := max + 1
	if epoch == 0 {
		return 0, errors.New("device: boot epochs used up")
	}
	target, slot := cur, next[cur]
	if slot >= bootSlots {
		target, slot = 1-cur, 0
		if err := s.EraseSector(offs[target]); err != nil {
			return 0, fmt.Errorf("device: erase boot record sector: %w", err)
		}
	}
	rec := bootRecord(epoch)
	at := offs[target] + int64(slot*bootRecordSize)
	if _, err := s.WriteAt(rec[:], at); err != nil {
		return 0, fmt.Errorf("device: program boot record: %w", err)
	}
	var back [bootRecordSize]byte
	if _, err := s.ReadAt(back[:], at); err != nil {
		return 0, err
	}
	if back != rec {
		return 0, errors.New("device: boot record did not program correctly (worn flash?)")
	}
	return epoch, nil
}
