// Package provision defines the per-device block a wearable carries in
// flash: its serial, the WPA2 password of its configuration access point and
// its provisioning key. `medpipe keys add ID --firmware-config FILE` writes
// it, as a UF2 file a person copies onto the Pico in BOOTSEL mode (or a raw
// block for picotool); the firmware (firmware/device) reads it at power-on.
// One image then serves every device, and no device runs on secrets that
// are published with the source.
//
// The package uses only what TinyGo compiles for the RP2040.
package provision

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
)

// Flash geometry of the Raspberry Pi Pico (W25Q16JV, 2 MiB, mapped at
// XIP base) and the device's storage region: the last RegionSectors
// sectors of flash, clear of any firmware image.
const (
	FlashBase     = 0x10000000
	FlashSize     = 2 << 20
	SectorSize    = 4096
	RegionSectors = 5
	RegionSize    = RegionSectors * SectorSize
	RegionAddr    = FlashBase + FlashSize - RegionSize
	// FactoryOffset is the factory block's sector in the region (the
	// firmware keeps its configuration and boot records in the others).
	FactoryOffset = 0
	FactoryAddr   = RegionAddr + FactoryOffset
)

// Factory is what each device carries from manufacturing, printed on its
// label for the person who configures it.
type Factory struct {
	Serial          string   // names the access point: medpipe-<Serial>
	APPassword      string   // WPA2 password of the access point
	ProvisioningKey [16]byte // encrypts and authenticates the configuration form
}

// Field limits.
const (
	MaxSerial        = 24 // the SSID medpipe-<serial> fits 32 bytes
	MinAPPassword    = 8  // WPA2
	MaxAPPassword    = 63 // WPA2 passphrase
	blockMagic       = "MPF1"
	headerLen        = 4 + 2
	maxBlockLen      = headerLen + 1 + MaxSerial + 1 + MaxAPPassword + 16 + 4
	serialCharacters = "A-Z a-z 0-9 _ -"
)

// ErrNoBlock means flash holds no valid factory block (erased, or damaged).
var ErrNoBlock = errors.New("provision: no factory block")

// Validate checks the fields' limits.
func (f *Factory) Validate() error {
	if f.Serial == "" || len(f.Serial) > MaxSerial {
		return fmt.Errorf("provision: serial must have 1 to %d characters", MaxSerial)
	}
	for _, c := range []byte(f.Serial) {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("provision: serial must be of %s", serialCharacters)
		}
	}
	if len(f.APPassword) < MinAPPassword || len(f.APPassword) > MaxAPPassword {
		return fmt.Errorf("provision: access point password must have %d to %d characters", MinAPPassword, MaxAPPassword)
	}
	for _, c := range []byte(f.APPassword) {
		if c < 0x20 || c > 0x7e {
			return errors.New("provision: access point password must be printable ASCII")
		}
	}
	if f.ProvisioningKey == ([16]byte{}) {
		return errors.New("provision: provisioning key is all zero")
	}
	return nil
}

// Append appends f's block: "MPF1", the body's length (uint16 big-endian),
// the body (serial and password each behind a length byte, then the 16-byte
// key) and a CRC-32 (IEEE) of everything before it.
func (f *Factory) Append(dst []byte) ([]byte, error) {
	if err := f.Validate(); err != nil {
		return dst, err
	}
	start := len(dst)
	body := 1 + len(f.Serial) + 1 + len(f.APPassword) + 16
	dst = append(dst, blockMagic...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(body))
	dst = append(dst, byte(len(f.Serial)))
	dst = append(dst, f.Serial...)
	dst = append(dst, byte(len(f.APPassword)))
	dst = append(dst, f.APPassword...)
	dst = append(dst, f.ProvisioningKey[:]...)
	return binary.BigEndian.AppendUint32(dst, crc32.ChecksumIEEE(dst[start:])), nil
}

// Parse reads a block from the start of b (trailing bytes, such as the
// erased rest of the sector, are ignored). A damaged or absent block is
// ErrNoBlock; errors never quote the secrets.
func Parse(b []byte) (Factory, error) {
	var f Factory
	if len(b) < headerLen || string(b[:4]) != blockMagic {
		return f, ErrNoBlock
	}
	n := int(binary.BigEndian.Uint16(b[4:]))
	if headerLen+n+4 > len(b) || headerLen+n+4 > maxBlockLen {
		return f, ErrNoBlock
	}
	if crc32.ChecksumIEEE(b[:headerLen+n]) != binary.BigEndian.Uint32(b[headerLen+n:]) {
		return f, ErrNoBlock
	}
	body := b[headerLen : headerLen+n]
	field := func() ([]byte, bool) {
		if len(body) < 1 || len(body) < 1+int(body[0]) {
			return nil, false
		}
		v := body[1 : 1+int(body[0])]
		body = body[1+int(body[0]):]
		return v, true
	}
	serial, ok1 := field()
	pass, ok2 := field()
	if !ok1 || !ok2 || len(body) != 16 {
		return Factory{}, fmt.Errorf("%w: malformed body", ErrNoBlock)
	}
	f.Serial, f.APPassword = string(serial), string(pass)
	copy(f.ProvisioningKey[:], body)
	if err := f.Validate(); err != nil {
		return Factory{}, err
	}
	return f, nil
}

// UF2 constants (Microsoft's UF2 format; RP2040 family id).
const (
	uf2Magic0       = 0x0A324655
	uf2Magic1       = 0x9E5D5157
	uf2MagicEnd     = 0x0AB16F30
	uf2FlagFamily   = 0x00002000
	uf2FamilyRP2040 = 0xe48bff56
	uf2Page         = 256
)

// AppendUF2 appends data as a UF2 file that the Pico's boot ROM writes at
// addr (a multiple of 256), in 256-byte pages padded with 0xFF.
func AppendUF2(dst []byte, addr uint32, data []byte) []byte {
	pages := (len(data) + uf2Page - 1) / uf2Page
	for i := range pages {
		var blk [512]byte
		binary.LittleEndian.PutUint32(blk[0:], uf2Magic0)
		binary.LittleEndian.PutUint32(blk[4:], uf2Magic1)
		binary.LittleEndian.PutUint32(blk[8:], uf2FlagFamily)
		binary.LittleEndian.PutUint32(blk[12:], addr+uint32(i*uf2Page))
		binary.LittleEndian.PutUint32(blk[16:], uf2Page)
		binary.LittleEndian.PutUint32(blk[20:], uint32(i))
		binary.LittleEndian.PutUint32(blk[24:], uint32(pages))
		binary.LittleEndian.PutUint32(blk[28:], uf2FamilyRP2040)
		page := blk[32 : 32+uf2Page]
		for j := range page {
			page[j] = 0xFF
		}
		copy(page, data[i*uf2Page:])
		binary.LittleEndian.PutUint32(blk[508:], uf2MagicEnd)
		dst = append(dst, blk[:]...)
	}
	return dst
}

// ReadUF2 returns the bytes a UF2 file writes from addr on (for tests and
// for checking a file before it is copied onto a device).
func ReadUF2(b []byte, addr uint32, n int) ([]byte, error) {
	out := make([]byte, n)
	for i := range out {
		out[i] = 0xFF
	}
	if len(b)%512 != 0 {
		return nil, errors.New("provision: UF2 size is not a multiple of 512")
	}
	for ; len(b) > 0; b = b[512:] {
		blk := b[:512]
		if binary.LittleEndian.Uint32(blk[0:]) != uf2Magic0 || binary.LittleEndian.Uint32(blk[4:]) != uf2Magic1 || binary.LittleEndian.Uint32(blk[508:]) != uf2MagicEnd {
			return nil, errors.New("provision: not a UF2 block")
		}
		at := binary.LittleEndian.Uint32(blk[12:])
		size := binary.LittleEndian.Uint32(blk[16:])
		if size > 476 {
			return nil, errors.New("provision: UF2 payload too large")
		}
		for j := range size {
			if a := at + j; a >= addr && a < addr+uint32(n) {
				out[a-addr] = blk[32+j]
			}
		}
	}
	return out, nil
}

// passwordAlphabet spells access point passwords for a label: no 0/O, 1/l/I.
const passwordAlphabet = "abcdefghijkmnpqrstuvwxyz23456789"

// New makes a factory block for serial with a random access point password
// (16 characters, 80 bits) and provisioning key from rnd (crypto/rand.Reader).
func New(serial string, rnd io.Reader) (Factory, error) {
	f := Factory{Serial: serial}
	var b [16]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return f, fmt.Errorf("provision: random: %w", err)
	}
	pass := make([]byte, 16)
	for i := range pass {
		pass[i] = passwordAlphabet[b[i]%byte(len(passwordAlphabet))] // 32 letters: no bias
	}
	f.APPassword = string(pass)
	if _, err := io.ReadFull(rnd, f.ProvisioningKey[:]); err != nil {
		return f, fmt.Errorf("provision: random: %w", err)
	}
	return f, f.Validate()
}

// File returns f's block as a file for the Pico: a UF2 (name ending in
// .uf2) that the boot ROM writes to the factory sector when copied onto the
// RPI-RP2 drive, or else the raw block for picotool at FactoryAddr.
func (f *Factory) File(name string) ([]byte, error) {
	b, err := f.Append(nil)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(strings.ToLower(name), ".uf2") {
		return AppendUF2(nil, FactoryAddr, b), nil
	}
	return b, nil
}

// WriteLabel writes what goes on device id's label, once its block is
// written to path: the access point's name and password and the
// provisioning key (shown once, like the device's keys).
func (f *Factory) WriteLabel(w io.Writer, id, path string) error {
	_, err := fmt.Fprintf(w, "firmware factory block for %s written to %s; print on the device's label (shown once):\n  access point  medpipe-%s\n  password      %s\n  provisioning  %x\n",
		id, path, f.Serial, f.APPassword, f.ProvisioningKey)
	return err
}
