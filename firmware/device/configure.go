package device

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/medpipe/medpipe/firmware/device/page"
	"github.com/medpipe/medpipe/firmware/esp"
)

// HTTP limits of the configuration server: the page's requests are small.
const (
	maxHeader = 4096
	maxBody   = 2048
)

// Configure runs configuration mode: a WPA2 access point named
// medpipe-<serial>, an HTTP server on port 80 serving the gzip-compressed
// page, and POST /config taking the form sealed with EAX under the
// provisioning key, bound to a single-use challenge. A valid form is stored
// in flash and returned; the caller switches to working mode.
func (d *Device) Configure(ctx context.Context) (Config, error) {
	d.b.LED.Set(true) // steady: configuration mode
	epoch, err := NextBootEpoch(d.b.Storage)
	if err != nil {
		return Config{}, fmt.Errorf("device: boot epoch: %w", err)
	}
	m := d.modem
	f := d.b.Factory
	for wait := time.Second; ; wait = min(2*wait, 10*time.Second) {
		d.alive()
		err := m.Sync(ctx)
		if err == nil {
			err = m.SetMode(ctx, esp.ModeAccessPoint)
		}
		if err == nil {
			err = m.StartAP(ctx, "medpipe-"+f.Serial, f.APPassword, 5)
		}
		if err == nil {
			err = m.Listen(ctx, 80)
		}
		if err == nil {
			break
		}
		d.log("configuration mode: %v; retrying", err)
		select {
		case <-ctx.Done():
			return Config{}, ctx.Err()
		case <-time.After(wait):
		}
	}
	d.log("configuration mode: join Wi-Fi medpipe-%s, open http://192.168.4.1/", f.Serial)
	// Each link is served on its own: a browser opens spare connections
	// that may stay silent, and one must not hold up the others.
	serving, stop := context.WithCancel(ctx)
	defer stop()
	s := &configServer{d: d, epoch: epoch}
	stored := make(chan Config, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			l, err := m.Accept(serving)
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer l.Close()
				if cfg, done := s.serve(serving, l); done {
					select {
					case stored <- cfg:
					default:
					}
				}
			}()
		}
	}()
	checkIn := time.NewTicker(feedEvery)
	defer checkIn.Stop()
	for {
		select {
		case <-checkIn.C:
			d.alive() // waiting for a browser is this loop's work
			continue
		case cfg := <-stored:
			d.log("configuration stored for device %s", cfg.Device.ID)
			// Close the port-80 server and its links before working mode: the
			// module refuses AT+CIPMUX while they are up, and the page must not
			// stay reachable.
			stop()
			if err := m.StopServer(ctx); err != nil {
				d.log("configuration mode: stop the server: %v", err)
			}
			wg.Wait()
			d.b.LED.Set(false)
			return cfg, nil
		case <-ctx.Done():
			return Config{}, ctx.Err()
		}
	}
}

type configServer struct {
	d         *Device
	epoch     uint32 // this boot's epoch: challenges never repeat across boots
	mu        sync.Mutex
	issued    uint32 // challenges issued this boot
	challenge []byte // outstanding single-use challenge, nil when none
}

// newChallenge returns a challenge that no earlier one of this device
// equals: the boot epoch and a counter, then hardware noise when the board
// has it (a recorded form is refused because its challenge is never issued
// again; the noise only makes challenges harder to guess).
func (s *configServer) newChallenge() []byte {
	s.issued++
	c := make([]byte, 16)
	binary.BigEndian.PutUint32(c[0:], s.epoch)
	binary.BigEndian.PutUint32(c[4:], s.issued)
	if s.d.b.Noise != nil {
		_, _ = io.ReadFull(s.d.b.Noise, c[8:])
	}
	return c
}

// request is the little of HTTP/1.x the page needs.
type request struct {
	method, path string
	body         []byte
}

// readRequest reads one request from r, within the limits.
func readRequest(r *bufio.Reader) (request, error) {
	var req request
	line, err := readLine(r)
	if err != nil {
		return req, err
	}
	parts := strings.Fields(line)
	if len(parts) != 3 || !strings.HasPrefix(parts[2], "HTTP/1.") {
		return req, errors.New("malformed request line")
	}
	req.method, req.path = parts[0], parts[1]
	length, size := 0, len(line)
	for {
		h, err := readLine(r)
		if err != nil {
			return req, err
		}
		if size += len(h); size > maxHeader {
			return req, errors.New("header too large")
		}
		if h == "" {
			break
		}
		name, value, _ := strings.Cut(h, ":")
		if strings.EqualFold(strings.TrimSpace(name), "Content-Length") {
			if length, err = strconv.Atoi(strings.TrimSpace(value)); err != nil || length < 0 {
				return req, errors.New("bad Content-Length")
			}
		}
	}
	if length > maxBody {
		return req, errors.New("body too large")
	}
	req.body = make([]byte, length)
	_, err = io.ReadFull(r, req.body)
	return req, err
}

func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", errors.New("line too long")
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// serve answers one request on l. It reports a stored configuration.
func (s *configServer) serve(ctx context.Context, l *esp.Link) (Config, bool) {
	l.SetReadTimeout(10 * time.Second)
	req, err := readRequest(bufio.NewReaderSize(l, 512))
	if errors.Is(err, esp.ErrTimeout) || errors.Is(err, io.EOF) {
		return Config{}, false // a spare connection that never asked: close it without an answer
	}
	if err != nil {
		s.reply(ctx, l, 400, "text/plain", nil, []byte("bad request: "+err.Error()))
		return Config{}, false
	}
	switch {
	case req.method == "GET" && (req.path == "/" || req.path == "/index.html"):
		s.reply(ctx, l, 200, "text/html; charset=utf-8", []string{"Content-Encoding: gzip"}, page.Gzip)
	case req.method == "GET" && req.path == "/challenge":
		s.mu.Lock()
		c := s.newChallenge()
		s.challenge = c
		s.mu.Unlock()
		s.reply(ctx, l, 200, "text/plain", nil, []byte(hex.EncodeToString(c)))
	case req.method == "POST" && req.path == "/config":
		cfg, err := s.configure(req.body)
		if err != nil {
			code := 400
			if errors.Is(err, ErrAuth) {
				code = 403
			}
			s.reply(ctx, l, code, "text/plain; charset=utf-8", nil, []byte(err.Error()))
			return Config{}, false
		}
		s.reply(ctx, l, 200, "text/plain; charset=utf-8", nil, []byte("Saved. The device now joins "+cfg.WiFiSSID+" and starts sending."))
		return cfg, true
	default:
		s.reply(ctx, l, 404, "text/plain", nil, []byte("not found"))
	}
	return Config{}, false
}

// configure checks, decrypts, validates and stores a submitted form.
func (s *configServer) configure(body []byte) (Config, error) {
	v, err := url.ParseQuery(string(body))
	if err != nil {
		return Config{}, fmt.Errorf("%w: form", ErrConfig)
	}
	challenge, err1 := hex.DecodeString(v.Get("c"))
	nonce, err2 := hex.DecodeString(v.Get("n"))
	sealed, err3 := hex.DecodeString(v.Get("d"))
	if err1 != nil || err2 != nil || err3 != nil || len(nonce) != 16 {
		return Config{}, fmt.Errorf("%w: form", ErrConfig)
	}
	// The challenge is single-use: a recorded submission cannot be replayed.
	s.mu.Lock()
	ok := s.challenge != nil && bytes.Equal(challenge, s.challenge)
	s.challenge = nil
	s.mu.Unlock()
	if !ok {
		return Config{}, ErrAuth
	}
	plain, err := eaxOpen(s.d.b.Factory.ProvisioningKey[:], nonce, challenge, sealed)
	if err != nil {
		return Config{}, err
	}
	form, err := url.ParseQuery(string(plain))
	if err != nil {
		return Config{}, fmt.Errorf("%w: form", ErrConfig)
	}
	cfg, err := ParseConfig(form)
	if err != nil {
		return Config{}, err
	}
	if err := SaveConfig(s.d.b.Storage, &cfg); err != nil {
		return Config{}, fmt.Errorf("device: store configuration: %w", err)
	}
	return cfg, nil
}

func (s *configServer) reply(ctx context.Context, l *esp.Link, code int, ctype string, headers []string, body []byte) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\nConnection: close\r\n", code, statusText(code), ctype, len(body))
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	b.Write(body)
	if _, err := l.WriteContext(ctx, b.Bytes()); err != nil {
		s.d.log("http reply: %v", err)
	}
}

func statusText(code int) string {
	switch code {
	case 200:
		return "OK"
	case 400:
		return "Bad Request"
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	}
	return "Internal Server Error"
}
