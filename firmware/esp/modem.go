// Package esp drives an ESP8266 Wi-Fi module running Espressif's AT
// firmware over a UART: access point or station mode, a TCP server and TCP
// client links with several links at once (CIPMUX=1). It is plain Go over an
// io.ReadWriter, so it runs on TinyGo with the Pico's UART and on a host
// against the fake module in espfake.
package esp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Errors returned by the modem.
var (
	ErrTimeout  = errors.New("esp: no answer in time")
	ErrCommand  = errors.New("esp: command failed")
	ErrBusy     = errors.New("esp: module stayed busy")
	ErrClosed   = errors.New("esp: link closed")
	ErrSendFail = errors.New("esp: send failed")
	ErrNoLink   = errors.New("esp: no free link")
	// ErrNotSynced: the module has no time from SNTP yet (it answers 1970).
	ErrNotSynced = errors.New("esp: clock not set by SNTP yet")
)

// MaxLinks is how many links the AT firmware multiplexes (ids 0-4).
const MaxLinks = 5

// maxSend is the most bytes one AT+CIPSEND takes.
const maxSend = 2048

// Options configures a Modem. Zero values take the documented defaults.
type Options struct {
	// CommandTimeout bounds a plain command (default 2 s).
	CommandTimeout time.Duration
	// JoinTimeout bounds joining a Wi-Fi network (default 20 s).
	JoinTimeout time.Duration
	// ConnectTimeout bounds opening a TCP link (default 10 s).
	ConnectTimeout time.Duration
	// BusyRetries is how often a command answered "busy p..." is retried,
	// 100 ms apart (default 20).
	BusyRetries int
}

func (o *Options) defaults() {
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 2 * time.Second
	}
	if o.JoinTimeout <= 0 {
		o.JoinTimeout = 20 * time.Second
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.BusyRetries <= 0 {
		o.BusyRetries = 20
	}
}

// Modem is one ESP8266 on a UART. Its methods are safe for concurrent use:
// commands are serialised, incoming data is routed to links by a reader
// goroutine started by New.
type Modem struct {
	uart io.ReadWriter
	o    Options

	cmd    sync.Mutex    // one command (or CIPSEND) at a time
	lines  chan string   // answers to the running command
	prompt chan struct{} // the '>' of CIPSEND

	mu       sync.Mutex
	links    [MaxLinks]*Link
	accepted chan *Link // links opened by remote peers (server mode)
	readErr  error
	done     chan struct{} // closed when the UART fails
	stats    Stats
}

// Stats counts what the driver saw; read it for diagnostics.
type Stats struct {
	Garbage  int // lines that matched nothing expected
	Busy     int // "busy" answers
	Received int // payload bytes from +IPD
}

// Stats returns what the driver counted so far.
func (m *Modem) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

func (m *Modem) count(f func(*Stats)) {
	m.mu.Lock()
	f(&m.stats)
	m.mu.Unlock()
}

// New starts driving the module on uart. The reader goroutine ends when the
// UART returns an error.
func New(uart io.ReadWriter, o Options) *Modem {
	o.defaults()
	m := &Modem{uart: uart, o: o, lines: make(chan string, 32), prompt: make(chan struct{}, 1),
		accepted: make(chan *Link, MaxLinks), done: make(chan struct{})}
	go m.read()
	return m
}

// read parses everything the module writes: answer lines, the CIPSEND
// prompt, +IPD data and link events.
func (m *Modem) read() {
	br := bufio.NewReaderSize(m.uart, 512)
	var line []byte
	fail := func(err error) {
		m.mu.Lock()
		m.readErr = err
		links := m.links
		m.mu.Unlock()
		for _, l := range links {
			if l != nil {
				l.closeLocal()
			}
		}
		close(m.done)
	}
	for {
		c, err := br.ReadByte()
		if err != nil {
			fail(err)
			return
		}
		switch {
		case c == '>' && len(line) == 0:
			select {
			case m.prompt <- struct{}{}:
			default:
			}
			continue
		case c == '\n':
			s := strings.TrimSpace(string(line))
			line = line[:0]
			if s != "" {
				m.handleLine(s)
			}
			continue
		}
		line = append(line, c)
		if c == ':' && len(line) > 5 && string(line[:5]) == "+IPD," {
			if err := m.readIPD(br, string(line[5:len(line)-1])); err != nil {
				fail(err)
				return
			}
			line = line[:0]
		}
		if len(line) > 512 { // a runaway line is garbage: start over
			m.count(func(s *Stats) { s.Garbage++ })
			line = line[:0]
		}
	}
}

// readIPD reads the payload of "+IPD,<id>,<len>:".
func (m *Modem) readIPD(br *bufio.Reader, head string) error {
	idText, lenText, ok := strings.Cut(head, ",")
	id, err1 := strconv.Atoi(idText)
	n, err2 := strconv.Atoi(lenText)
	if !ok || err1 != nil || err2 != nil || id < 0 || id >= MaxLinks || n < 0 || n > 8192 {
		m.count(func(s *Stats) { s.Garbage++ })
		return nil // not a real +IPD header: resynchronise on the next line
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(br, buf); err != nil {
		return err
	}
	m.count(func(s *Stats) { s.Received += n })
	if l := m.link(id, false); l != nil {
		l.deliver(buf)
	}
	return nil
}

func (m *Modem) handleLine(s string) {
	if id, event, ok := linkEvent(s); ok {
		switch event {
		case "CONNECT":
			l := m.link(id, true)
			if l.server {
				select {
				case m.accepted <- l:
				default:
				}
			}
		case "CLOSED", "CONNECT FAIL":
			if l := m.link(id, false); l != nil {
				l.closeLocal()
				m.mu.Lock()
				if m.links[id] == l {
					m.links[id] = nil
				}
				m.mu.Unlock()
			}
		}
		return
	}
	switch {
	case strings.HasPrefix(s, "WIFI "), s == "ready", strings.HasPrefix(s, "Recv "):
		return // status lines nothing waits for
	}
	select {
	case m.lines <- s:
	default:
		m.count(func(s *Stats) { s.Garbage++ }) // nobody is waiting: unsolicited noise
	}
}

// linkEvent parses "<id>,CONNECT", "<id>,CLOSED" and "<id>,CONNECT FAIL".
func linkEvent(s string) (int, string, bool) {
	if len(s) < 3 || s[1] != ',' || s[0] < '0' || s[0] >= '0'+MaxLinks {
		return 0, "", false
	}
	switch ev := s[2:]; ev {
	case "CONNECT", "CLOSED", "CONNECT FAIL":
		return int(s[0] - '0'), ev, true
	}
	return 0, "", false
}

// link returns link id, creating it (as a server-side link unless one was
// being dialled) when create is set.
func (m *Modem) link(id int, create bool) *Link {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.links[id]
	if l == nil && create {
		l = newLink(m, id, true)
		m.links[id] = l
	}
	return l
}

// Err returns why the UART failed, or nil.
func (m *Modem) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.readErr
}

// Command sends "AT<cmd>" and returns the lines answered before OK. ERROR
// or FAIL give ErrCommand (with the lines), "busy" answers are retried.
func (m *Modem) Command(ctx context.Context, cmd string, timeout time.Duration) ([]string, error) {
	m.cmd.Lock()
	defer m.cmd.Unlock()
	return m.command(ctx, cmd, timeout)
}

func (m *Modem) command(ctx context.Context, cmd string, timeout time.Duration) ([]string, error) {
	if timeout <= 0 {
		timeout = m.o.CommandTimeout
	}
	for try := 0; ; try++ {
		m.drain()
		if _, err := io.WriteString(m.uart, "AT"+cmd+"\r\n"); err != nil {
			return nil, fmt.Errorf("esp: AT%s: %w", redact(cmd), err)
		}
		lines, err := m.await(ctx, timeout, "OK")
		if errors.Is(err, ErrBusy) && try < m.o.BusyRetries {
			if !sleep(ctx, 100*time.Millisecond) {
				return nil, ctx.Err()
			}
			continue
		}
		if err != nil {
			return lines, fmt.Errorf("AT%s: %w", redact(cmd), err)
		}
		return lines, nil
	}
}

// await collects answer lines until want, ERROR/FAIL, busy or the timeout.
func (m *Modem) await(ctx context.Context, timeout time.Duration, want string) ([]string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	var got []string
	for {
		select {
		case s := <-m.lines:
			switch {
			case s == want:
				return got, nil
			case s == "ERROR" || s == "FAIL" || s == "SEND FAIL" || s == "link is not valid":
				return got, fmt.Errorf("%w: %s", ErrCommand, strings.Join(append(got, s), " | "))
			case strings.HasPrefix(s, "busy "):
				m.count(func(s *Stats) { s.Busy++ })
				return got, ErrBusy
			case strings.HasPrefix(s, "AT"): // our own echo (ATE1)
			default:
				got = append(got, s)
			}
		case <-t.C:
			return got, ErrTimeout
		case <-m.done:
			return got, fmt.Errorf("esp: uart: %w", m.Err())
		case <-ctx.Done():
			return got, ctx.Err()
		}
	}
}

// drain drops answers left over from an earlier command that timed out.
func (m *Modem) drain() {
	for {
		select {
		case <-m.lines:
		case <-m.prompt:
		default:
			return
		}
	}
}

// Sync brings the module to a known state after a reset or garbage on the
// line: "AT" until it answers OK, then echo off.
func (m *Modem) Sync(ctx context.Context) error {
	m.cmd.Lock()
	defer m.cmd.Unlock()
	var err error
	for range 10 {
		// A bare line ends whatever half-command garbage preceded it.
		if _, err = io.WriteString(m.uart, "\r\n"); err != nil {
			return err
		}
		if _, err = m.command(ctx, "", 500*time.Millisecond); err == nil {
			_, err = m.command(ctx, "E0", 0)
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return fmt.Errorf("esp: module does not answer: %w", err)
}

// Mode values for SetMode.
const (
	ModeStation     = 1
	ModeAccessPoint = 2
)

// SetMode sets station or access point mode and enables several links.
func (m *Modem) SetMode(ctx context.Context, mode int) error {
	if _, err := m.Command(ctx, "+CWMODE="+strconv.Itoa(mode), 0); err != nil {
		return err
	}
	_, err := m.Command(ctx, "+CIPMUX=1", 0)
	return err
}

// StartAP starts a WPA2 access point for one station on channel ch.
func (m *Modem) StartAP(ctx context.Context, ssid, password string, ch int) error {
	if len(password) < 8 {
		return errors.New("esp: WPA2 needs a password of at least 8 characters")
	}
	_, err := m.Command(ctx, fmt.Sprintf(`+CWSAP="%s","%s",%d,3,1,0`, quote(ssid), quote(password), ch), 5*time.Second)
	return err
}

// Join joins a Wi-Fi network as a station.
func (m *Modem) Join(ctx context.Context, ssid, password string) error {
	_, err := m.Command(ctx, fmt.Sprintf(`+CWJAP="%s","%s"`, quote(ssid), quote(password)), m.o.JoinTimeout)
	return err
}

// SNTP makes the module keep its clock from the given SNTP servers (at
// most three), in UTC. It syncs in the background once it has a network.
func (m *Modem) SNTP(ctx context.Context, servers ...string) error {
	if len(servers) == 0 || len(servers) > 3 {
		return fmt.Errorf("esp: SNTP takes 1 to 3 servers, not %d", len(servers))
	}
	cmd := "+CIPSNTPCFG=1,0"
	for _, s := range servers {
		cmd += `,"` + quote(s) + `"`
	}
	_, err := m.Command(ctx, cmd, 0)
	return err
}

// SNTPTime returns the module's clock (to the second), or ErrNotSynced
// before SNTP has set it.
func (m *Modem) SNTPTime(ctx context.Context) (time.Time, error) {
	lines, err := m.Command(ctx, "+CIPSNTPTIME?", 0)
	if err != nil {
		return time.Time{}, err
	}
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, "+CIPSNTPTIME:"); ok {
			return ParseSNTPTime(v)
		}
	}
	return time.Time{}, fmt.Errorf("%w: no +CIPSNTPTIME in %q", ErrCommand, lines)
}

// SNTPLayout is how the AT firmware writes its clock (C's asctime, UTC
// with timezone 0); the day may be space-padded or zero-padded.
const SNTPLayout = "Mon Jan _2 15:04:05 2006"

// ParseSNTPTime reads the module's clock as AT+CIPSNTPTIME? answers it.
// A clock before 2020 has not been set (the module starts at 1970).
func ParseSNTPTime(s string) (time.Time, error) {
	t, err := time.Parse(SNTPLayout, strings.TrimSpace(s))
	if err != nil {
		return time.Time{}, fmt.Errorf("esp: SNTP time %q: %w", s, err)
	}
	if t.Year() < 2020 {
		return time.Time{}, ErrNotSynced
	}
	return t, nil
}

// Listen starts the TCP server on port; Accept returns its links.
func (m *Modem) Listen(ctx context.Context, port int) error {
	_, err := m.Command(ctx, "+CIPSERVER=1,"+strconv.Itoa(port), 0)
	return err
}

// StopServer deletes the TCP server (AT+CIPSERVER=0) and closes the links
// it accepted: the module refuses AT+CIPMUX while either is up, and a
// configuration server must not stay reachable in working mode.
func (m *Modem) StopServer(ctx context.Context) error {
	if _, err := m.Command(ctx, "+CIPSERVER=0", 0); err != nil {
		return err
	}
	m.mu.Lock()
	var open []*Link
	for _, l := range m.links {
		if l != nil && l.server {
			open = append(open, l)
		}
	}
	m.mu.Unlock()
	for _, l := range open {
		// A link its peer closed a moment ago answers UNLINK: it is closed
		// all the same.
		_ = l.Close()
	}
	for {
		select {
		case <-m.accepted: // opened before the server went: closed above
		default:
			return nil
		}
	}
}

// Accept waits for a remote peer to open a link to the server.
func (m *Modem) Accept(ctx context.Context) (*Link, error) {
	select {
	case l := <-m.accepted:
		return l, nil
	case <-m.done:
		return nil, fmt.Errorf("esp: uart: %w", m.Err())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Dial opens a TCP link to host:port.
func (m *Modem) Dial(ctx context.Context, host string, port int) (*Link, error) {
	m.mu.Lock()
	id := -1
	for i := MaxLinks - 1; i >= 0; i-- { // the server hands out low ids
		if m.links[i] == nil {
			id = i
			break
		}
	}
	if id < 0 {
		m.mu.Unlock()
		return nil, ErrNoLink
	}
	l := newLink(m, id, false)
	m.links[id] = l
	m.mu.Unlock()
	_, err := m.Command(ctx, fmt.Sprintf(`+CIPSTART=%d,"TCP","%s",%d`, id, quote(host), port), m.o.ConnectTimeout)
	if err != nil && !strings.Contains(err.Error(), "ALREADY CONNECTED") {
		m.mu.Lock()
		if m.links[id] == l {
			m.links[id] = nil
		}
		m.mu.Unlock()
		return nil, fmt.Errorf("esp: connect to %s:%d: %w", host, port, err)
	}
	return l, nil
}

// send writes data on link id with AT+CIPSEND, in chunks the module takes.
func (m *Modem) send(ctx context.Context, id int, data []byte) error {
	m.cmd.Lock()
	defer m.cmd.Unlock()
	for len(data) > 0 {
		n := min(len(data), maxSend)
		if err := m.sendChunk(ctx, id, data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func (m *Modem) sendChunk(ctx context.Context, id int, chunk []byte) error {
	for try := 0; ; try++ {
		m.drain()
		if _, err := fmt.Fprintf(m.uart, "AT+CIPSEND=%d,%d\r\n", id, len(chunk)); err != nil {
			return err
		}
		err := m.awaitPrompt(ctx)
		if errors.Is(err, ErrBusy) && try < m.o.BusyRetries {
			if !sleep(ctx, 100*time.Millisecond) {
				return ctx.Err()
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("esp: send on link %d: %w", id, err)
		}
		break
	}
	if _, err := m.uart.Write(chunk); err != nil {
		return err
	}
	if _, err := m.await(ctx, 5*time.Second, "SEND OK"); err != nil {
		return fmt.Errorf("esp: send on link %d: %w: %w", id, ErrSendFail, err)
	}
	return nil
}

// awaitPrompt waits for the '>' after AT+CIPSEND (after its OK line).
func (m *Modem) awaitPrompt(ctx context.Context) error {
	t := time.NewTimer(m.o.CommandTimeout)
	defer t.Stop()
	for {
		select {
		case <-m.prompt:
			return nil
		case s := <-m.lines:
			switch {
			case s == "ERROR" || s == "link is not valid" || s == "FAIL":
				return fmt.Errorf("%w: %s", ErrCommand, s)
			case strings.HasPrefix(s, "busy "):
				m.count(func(s *Stats) { s.Busy++ })
				return ErrBusy
			}
		case <-t.C:
			return ErrTimeout
		case <-m.done:
			return fmt.Errorf("esp: uart: %w", m.Err())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// closeLink asks the module to close link id.
func (m *Modem) closeLink(ctx context.Context, id int) error {
	_, err := m.Command(ctx, "+CIPCLOSE="+strconv.Itoa(id), 0)
	return err
}

// quote escapes the characters the AT firmware treats specially in a
// quoted string argument.
func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `,`, `\,`)
	return r.Replace(s)
}

// redact keeps passwords out of errors: CWJAP and CWSAP carry them.
func redact(cmd string) string {
	if strings.HasPrefix(cmd, "+CWJAP=") || strings.HasPrefix(cmd, "+CWSAP=") {
		return cmd[:6] + "=…"
	}
	return cmd
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
