package device

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/url"
	"strconv"

	"github.com/medpipe/medpipe/wire"
)

// Config is what the configuration page sets and flash keeps.
type Config struct {
	WiFiSSID, WiFiPassword string
	Server                 string // host name or address of the medpipe edge
	Port                   int
	Device                 wire.Device // id, key and IV as in the server's keys file
	Protocol               string      // "v2" (default) or "pico" (legacy, for servers not yet upgraded)
}

// Protocols the device speaks.
const (
	ProtocolV2     = "v2"
	ProtocolLegacy = "pico"
)

// Values encodes c as form values (the page's fields).
func (c *Config) Values() url.Values {
	return url.Values{
		"ssid": {c.WiFiSSID}, "pass": {c.WiFiPassword}, "host": {c.Server}, "port": {strconv.Itoa(c.Port)},
		"id": {c.Device.ID}, "key": {string(c.Device.Key[:])}, "iv": {string(c.Device.IV[:])}, "proto": {c.Protocol},
	}
}

// ErrConfig marks a configuration that is incomplete or invalid.
var ErrConfig = errors.New("device: configuration")

// ParseConfig reads and validates form values. Errors never quote secrets.
func ParseConfig(v url.Values) (Config, error) {
	c := Config{WiFiSSID: v.Get("ssid"), WiFiPassword: v.Get("pass"), Server: v.Get("host"), Protocol: v.Get("proto")}
	port, err := strconv.Atoi(v.Get("port"))
	switch {
	case c.WiFiSSID == "" || len(c.WiFiSSID) > 32:
		return c, fmt.Errorf("%w: Wi-Fi name must have 1 to 32 characters", ErrConfig)
	case len(c.WiFiPassword) > 64:
		return c, fmt.Errorf("%w: Wi-Fi password longer than 64 characters", ErrConfig)
	case c.Server == "" || len(c.Server) > 253:
		return c, fmt.Errorf("%w: server address missing", ErrConfig)
	case err != nil || port < 1 || port > 65535:
		return c, fmt.Errorf("%w: server port must be 1-65535", ErrConfig)
	case !wire.ValidID(v.Get("id")):
		return c, fmt.Errorf("%w: device id must be 1-64 of A-Z a-z 0-9 _ -", ErrConfig)
	case len(v.Get("key")) != 16 || len(v.Get("iv")) != 16:
		return c, fmt.Errorf("%w: device key and IV must be 16 characters each", ErrConfig)
	}
	if c.Protocol == "" {
		c.Protocol = ProtocolV2
	}
	if c.Protocol != ProtocolV2 && c.Protocol != ProtocolLegacy {
		return c, fmt.Errorf("%w: protocol must be v2 or pico", ErrConfig)
	}
	c.Port = port
	c.Device.ID = v.Get("id")
	copy(c.Device.Key[:], v.Get("key"))
	copy(c.Device.IV[:], v.Get("iv"))
	return c, nil
}

// Flash layout of the storage region: the configuration record at 0, the
// sequence number reservation at SeqOffset.
const (
	ConfigSize  = 1024
	SeqOffset   = ConfigSize
	StorageSize = ConfigSize + 16
	configMagic = "MPC1"
)

// Storage is the flash region the board reserves for the device.
type Storage interface {
	io.ReaderAt
	io.WriterAt
}

// ErrNoConfig means flash holds no valid configuration (a new device, or
// a record damaged by power loss during a write).
var ErrNoConfig = errors.New("device: no configuration stored")

// SaveConfig writes c to flash: magic, length, form-encoded values, CRC-32.
func SaveConfig(s Storage, c *Config) error {
	payload := c.Values().Encode()
	if 4+2+len(payload)+4 > ConfigSize {
		return fmt.Errorf("%w: too long to store", ErrConfig)
	}
	rec := make([]byte, 0, ConfigSize)
	rec = append(rec, configMagic...)
	rec = binary.BigEndian.AppendUint16(rec, uint16(len(payload)))
	rec = append(rec, payload...)
	rec = binary.BigEndian.AppendUint32(rec, crc32.ChecksumIEEE(rec))
	_, err := s.WriteAt(rec, 0)
	return err
}

// LoadConfig reads the configuration from flash.
func LoadConfig(s Storage) (Config, error) {
	var head [6]byte
	if _, err := s.ReadAt(head[:], 0); err != nil {
		return Config{}, err
	}
	n := int(binary.BigEndian.Uint16(head[4:]))
	if string(head[:4]) != configMagic || 6+n+4 > ConfigSize {
		return Config{}, ErrNoConfig
	}
	rec := make([]byte, 6+n+4)
	if _, err := s.ReadAt(rec, 0); err != nil {
		return Config{}, err
	}
	if crc32.ChecksumIEEE(rec[:6+n]) != binary.BigEndian.Uint32(rec[6+n:]) {
		return Config{}, ErrNoConfig
	}
	v, err := url.ParseQuery(string(rec[6 : 6+n]))
	if err != nil {
		return Config{}, ErrNoConfig
	}
	return ParseConfig(v)
}

// SeqBlock is how many v2 sequence numbers one flash write reserves: the
// number must never repeat across reboots, and flash wears out, so the
// device writes "next free block" once per block, and a reboot skips the
// rest of the block.
const SeqBlock = 1000

// reserveSeq returns the first sequence number of a fresh block and
// records the block as used.
func reserveSeq(s Storage) (uint64, error) {
	var b [12]byte
	if _, err := s.ReadAt(b[:], SeqOffset); err != nil {
		return 0, err
	}
	next := uint64(1)
	if v := binary.BigEndian.Uint64(b[:8]); v != ^uint64(0) && crc32.ChecksumIEEE(b[:8]) == binary.BigEndian.Uint32(b[8:]) {
		next = v
	}
	binary.BigEndian.PutUint64(b[:8], next+SeqBlock)
	binary.BigEndian.PutUint32(b[8:], crc32.ChecksumIEEE(b[:8]))
	if _, err := s.WriteAt(b[:], SeqOffset); err != nil {
		return 0, err
	}
	return next, nil
}
