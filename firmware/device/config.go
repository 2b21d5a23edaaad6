package device

import (
	"errors"
	"fmt"
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
