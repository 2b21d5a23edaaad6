package device

import (
	"bufio"
	"bytes"
	"net/url"
	"testing"

	"github.com/medpipe/medpipe/firmware/hwfake"
)

// FuzzReadRequest feeds the configuration server's HTTP parser anything:
// it must return a request within the limits or an error, never panic.
func FuzzReadRequest(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: 192.168.4.1\r\n\r\n"))
	f.Add([]byte("POST /config HTTP/1.1\r\nContent-Length: 5\r\n\r\nc=1&n"))
	f.Add([]byte("POST /config HTTP/1.1\r\nContent-Length: -1\r\n\r\n"))
	f.Add([]byte("GET /\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := readRequest(bufio.NewReaderSize(bytes.NewReader(b), 512))
		if err == nil && len(req.body) > maxBody {
			t.Fatalf("body of %d bytes accepted", len(req.body))
		}
	})
}

// FuzzLoadConfig reads arbitrary flash contents: a damaged record is
// ErrNoConfig or a configuration error, and a stored one reads back.
func FuzzLoadConfig(f *testing.F) {
	good := hwfake.NewFlash(StorageSize)
	c := Config{WiFiSSID: "ward-7", WiFiPassword: "pw", Server: "h", Port: 9998, Protocol: ProtocolV2}
	c.Device.ID = "dev"
	if err := SaveConfig(good, &c); err != nil {
		f.Fatal(err)
	}
	rec := make([]byte, ConfigSize)
	good.ReadAt(rec, configOffsetA)
	f.Add(rec)
	f.Add([]byte("MPC2\x00\x00\x00\x01\x00\x05ssid=x\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fl := hwfake.NewFlash(StorageSize)
		fl.WriteAt(b[:min(len(b), ConfigSize)], configOffsetA)
		cfg, err := LoadConfig(fl)
		if err != nil {
			return
		}
		if err := SaveConfig(fl, &cfg); err != nil {
			t.Fatalf("a loaded configuration cannot be stored: %v", err)
		}
		again, err := LoadConfig(fl)
		if err != nil || again != cfg {
			t.Fatalf("round trip: %+v, %v", again, err)
		}
	})
}

// FuzzParseConfig checks the form validation on any values.
func FuzzParseConfig(f *testing.F) {
	f.Add("ssid=w&pass=p&host=h&port=9998&id=d&key=0123456789abcdef&iv=0123456789abcdef&proto=v2")
	f.Add("port=99999")
	f.Fuzz(func(t *testing.T, q string) {
		v, err := url.ParseQuery(q)
		if err != nil {
			return
		}
		cfg, err := ParseConfig(v)
		if err != nil {
			return
		}
		back, err := ParseConfig(cfg.Values())
		if err != nil || back != cfg {
			t.Fatalf("values round trip: %+v, %v", back, err)
		}
	})
}
