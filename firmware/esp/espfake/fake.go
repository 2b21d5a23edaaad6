// Package espfake is a fake ESP8266 for host tests: it speaks the AT
// command set over one end of a net.Pipe (the firmware's UART) and bridges
// its TCP links to real loopback sockets, so firmware built with standard
// Go talks to a real medpipe server and serves a real browser.
package espfake

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configures a Module.
type Options struct {
	// Networks are the Wi-Fi networks in reach: SSID → password.
	Networks map[string]string
	// Resolve maps the host and port a CIPSTART names to a dialable address
	// (default host:port).
	Resolve func(host string, port int) string
	// ServerAddr is where the TCP server of CIPSERVER listens (default
	// 127.0.0.1:0; Addr tells the port).
	ServerAddr string
	// SNTPDelay is how long after CIPSNTPCFG, once joined to a network, the
	// clock is set (default 0: at once). Before that CIPSNTPTIME? answers
	// 1970, as the real module does.
	SNTPDelay time.Duration
	// Now is the time SNTP gives (default time.Now).
	Now func() time.Time
	// BaudRate is the UART's speed (default DefaultBaudRate; negative: not
	// metered). Every byte takes 10 bit times (8N1) in its direction, as on
	// the wire, so a test sees what the link can carry.
	BaudRate int
	// BeforeSendOK, when set, runs before each CIPSEND's "SEND OK": a test
	// holds sends in flight with it, as a module waiting for a TCP window
	// or a slow access point does.
	BeforeSendOK func()
}

// DefaultBaudRate is the AT firmware's default UART speed.
const DefaultBaudRate = 115200

// Module is one fake ESP8266.
type Module struct {
	o    Options
	uart net.Conn // the module's end of the UART

	toModule, fromModule meter // the UART's two directions

	wmu sync.Mutex // serialises writes to the UART

	mu     sync.Mutex
	mode   int
	mux    bool
	echo   bool
	ap     AP
	joined string
	links  [5]net.Conn
	ln     net.Listener
	busy   int
	sntp   []string  // servers set with CIPSNTPCFG
	sntpAt time.Time // when, or when joined if later

	// Refused counts commands refused for the module's state (CIPMUX with
	// links or a server up, CIPSERVER without CIPMUX=1): a firmware bug.
	Refused atomic.Int64
}

// AP is the access point configuration set with CWSAP.
type AP struct {
	SSID, Password      string
	Channel, Encryption int
}

// New returns a module and the firmware's end of its UART.
func New(o Options) (*Module, net.Conn) {
	if o.Resolve == nil {
		o.Resolve = func(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }
	}
	if o.ServerAddr == "" {
		o.ServerAddr = "127.0.0.1:0"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.BaudRate == 0 {
		o.BaudRate = DefaultBaudRate
	}
	fw, mod := net.Pipe()
	m := &Module{o: o, uart: mod, echo: true}
	m.toModule.baud, m.fromModule.baud = o.BaudRate, o.BaudRate
	go m.serve()
	return m, fw
}

// Close stops the module: its UART, links and server.
func (m *Module) Close() error {
	m.mu.Lock()
	links, ln := m.links, m.ln
	m.mu.Unlock()
	for _, c := range links {
		if c != nil {
			c.Close()
		}
	}
	if ln != nil {
		ln.Close()
	}
	return m.uart.Close()
}

// ServerAddr returns the loopback address of the CIPSERVER server, or nil.
func (m *Module) ServerAddr() net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ln == nil {
		return nil
	}
	return m.ln.Addr()
}

// AccessPoint returns the access point configuration, if one was set.
func (m *Module) AccessPoint() AP {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ap
}

// Joined returns the SSID the module joined as a station ("" if none).
func (m *Module) Joined() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.joined
}

// Mode returns the CWMODE set (1 station, 2 access point, 3 both).
func (m *Module) Mode() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mode
}

// Busy makes the next n commands answer "busy p..." as a module still
// working on an earlier one does.
func (m *Module) Busy(n int) {
	m.mu.Lock()
	m.busy = n
	m.mu.Unlock()
}

// Garbage writes b on the UART, as a module does when it reboots (boot
// messages at another baud rate) or when the line is noisy.
func (m *Module) Garbage(b []byte) { m.write(b) }

// DropLinks closes every TCP link from the far side, as a lost Wi-Fi would.
func (m *Module) DropLinks() {
	m.mu.Lock()
	links := m.links
	m.mu.Unlock()
	for _, c := range links {
		if c != nil {
			c.Close()
		}
	}
}

func (m *Module) write(b []byte) {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	m.fromModule.transfer(len(b))
	_ = m.uart.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = m.uart.Write(b)
}

// meter times one direction of the UART: bytes take their bit times one
// after another, and the line is busy while they do.
type meter struct {
	baud int

	mu    sync.Mutex
	free  time.Time     // when the bytes transferred so far are through
	busy  time.Duration // line time used
	bytes int64
}

// transfer accounts for n bytes and waits until they are through the line.
func (t *meter) transfer(n int) {
	if t.baud <= 0 || n <= 0 {
		return
	}
	d := time.Duration(n) * 10 * time.Second / time.Duration(t.baud)
	t.mu.Lock()
	now := time.Now()
	start := t.free
	if start.Before(now) {
		start = now
	}
	t.free = start.Add(d)
	t.busy += d
	t.bytes += int64(n)
	wait := t.free.Sub(now)
	t.mu.Unlock()
	// Short waits are left to add up: a sleep costs more than a few bytes.
	if wait > time.Millisecond {
		time.Sleep(wait)
	}
}

func (t *meter) stats() (int64, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bytes, t.busy
}

// LinkStats is what went over the UART so far, each way: bytes and the
// line time they took at the baud rate.
type LinkStats struct {
	ToModule, FromModule         int64
	ToModuleBusy, FromModuleBusy time.Duration
}

// Link returns the UART's counters.
func (m *Module) Link() LinkStats {
	var s LinkStats
	s.ToModule, s.ToModuleBusy = m.toModule.stats()
	s.FromModule, s.FromModuleBusy = m.fromModule.stats()
	return s
}

// uartReader reads what the firmware sends, at the line's pace: a small
// buffer, and each chunk takes its bit times before the next is taken, so a
// firmware's Write lasts as long as the bytes take on the wire.
type uartReader struct{ m *Module }

func (r uartReader) Read(p []byte) (int, error) {
	n, err := r.m.uart.Read(p)
	r.m.toModule.transfer(n)
	return n, err
}

func (m *Module) say(lines ...string) {
	m.write([]byte(strings.Join(lines, "\r\n") + "\r\n"))
}

// serve reads commands from the UART until it closes.
func (m *Module) serve() {
	// A UART FIFO's worth at a time (the ESP8266's is 128 bytes).
	br := bufio.NewReaderSize(uartReader{m}, 128)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			continue
		}
		m.mu.Lock()
		echo, busy := m.echo, m.busy > 0
		if busy {
			m.busy--
		}
		m.mu.Unlock()
		if echo {
			m.say(line)
		}
		if busy {
			m.say("busy p...")
			continue
		}
		if !strings.HasPrefix(line, "AT") {
			m.say("ERROR")
			continue
		}
		m.command(br, line[2:])
	}
}

func (m *Module) command(br *bufio.Reader, cmd string) {
	name, arg, _ := strings.Cut(cmd, "=")
	args := splitArgs(arg)
	switch name {
	case "":
		m.say("", "OK")
	case "E0", "E1":
		m.mu.Lock()
		m.echo = name == "E1"
		m.mu.Unlock()
		m.say("", "OK")
	case "+RST":
		m.say("", "OK")
		m.Garbage([]byte{0x00, 0xfe, 0x12, 'r', 'l', 0x8c, '\r', '\n'})
		m.say("ready")
	case "+CWMODE":
		mode, err := strconv.Atoi(arg)
		if err != nil || mode < 1 || mode > 3 {
			m.say("ERROR")
			return
		}
		m.mu.Lock()
		m.mode = mode
		m.mu.Unlock()
		m.say("", "OK")
	case "+CIPMUX":
		// Espressif's AT instruction set: the mode can only be changed
		// with every connection closed, and with no TCP server running
		// (AT+CIPSERVER=0 first); the module answers "link is builded".
		if arg != "0" && arg != "1" {
			m.say("ERROR")
			return
		}
		m.mu.Lock()
		busy := m.ln != nil
		for _, c := range m.links {
			busy = busy || c != nil
		}
		if !busy {
			m.mux = arg == "1"
		}
		m.mu.Unlock()
		if busy {
			m.Refused.Add(1)
			m.say("link is builded", "", "ERROR")
			return
		}
		m.say("", "OK")
	case "+CWSAP":
		// "ssid","pwd",channel,encryption[,max connections[,hidden]]
		if len(args) < 4 {
			m.say("ERROR")
			return
		}
		ch, _ := strconv.Atoi(args[2])
		ecn, _ := strconv.Atoi(args[3])
		if ecn != 0 && len(args[1]) < 8 || ch < 1 || ch > 13 || m.Mode()&2 == 0 {
			m.say("ERROR")
			return
		}
		m.mu.Lock()
		m.ap = AP{SSID: args[0], Password: args[1], Channel: ch, Encryption: ecn}
		m.mu.Unlock()
		m.say("", "OK")
	case "+CWJAP":
		if len(args) < 2 || m.Mode()&1 == 0 {
			m.say("ERROR")
			return
		}
		time.Sleep(20 * time.Millisecond) // joining takes a while
		pass, ok := m.o.Networks[args[0]]
		if !ok || pass != args[1] {
			m.say("+CWJAP:3", "", "FAIL") // 3: no AP found / wrong password
			return
		}
		m.mu.Lock()
		m.joined = args[0]
		m.sntpAt = time.Now()
		m.mu.Unlock()
		m.say("WIFI CONNECTED", "WIFI GOT IP", "", "OK")
	case "+CIPSNTPCFG":
		// enable,timezone[,server1[,server2[,server3]]]
		if len(args) < 2 || len(args) > 5 || args[0] != "1" {
			m.say("ERROR")
			return
		}
		m.mu.Lock()
		m.sntp, m.sntpAt = args[2:], time.Now()
		m.mu.Unlock()
		m.say("", "OK")
	case "+CIPSNTPTIME?":
		m.say("+CIPSNTPTIME:"+m.clock().Format("Mon Jan 02 15:04:05 2006"), "", "OK")
	case "+CIPSERVER":
		if len(args) >= 1 && args[0] == "0" {
			m.stopServer()
			return
		}
		m.startServer(args)
	case "+CIPSTART":
		m.dial(args)
	case "+CIPSEND":
		m.send(br, args)
	case "+CIPCLOSE":
		id, err := strconv.Atoi(arg)
		c := m.link(id, err == nil)
		if c == nil {
			m.say("UNLINK", "", "ERROR")
			return
		}
		m.setLink(id, c, nil)
		c.Close()
		m.say(fmt.Sprintf("%d,CLOSED", id), "", "OK")
	default:
		m.say("ERROR")
	}
}

// SNTPServers returns the servers set with CIPSNTPCFG.
func (m *Module) SNTPServers() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sntp
}

// clock is the module's clock: SNTP time once configured, joined and
// SNTPDelay on; 1970 (its power-on time) before.
func (m *Module) clock() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sntp == nil || m.joined == "" || time.Since(m.sntpAt) < m.o.SNTPDelay {
		return time.Unix(0, 0).UTC()
	}
	return m.o.Now().UTC()
}

// splitArgs splits AT arguments at commas outside quotes and unquotes them.
func splitArgs(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, escaped := false, false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped = true
		case r == '"':
			inQuote = !inQuote
		case r == ',' && !inQuote:
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	if s != "" {
		out = append(out, cur.String())
	}
	return out
}

func (m *Module) link(id int, ok bool) net.Conn {
	if !ok || id < 0 || id >= 5 {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.links[id]
}

// setLink replaces link id's connection if it is still old.
func (m *Module) setLink(id int, old, c net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.links[id] != old {
		return false
	}
	m.links[id] = c
	return true
}

// stopServer deletes the TCP server (AT+CIPSERVER=0). Links it accepted
// stay open until closed, as on the module.
func (m *Module) stopServer() {
	m.mu.Lock()
	ln := m.ln
	m.ln = nil
	m.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	m.say("", "OK")
}

func (m *Module) startServer(args []string) {
	// A server can only be created with multiple connections (CIPMUX=1).
	if len(args) < 1 || args[0] != "1" || !m.muxOn() {
		m.Refused.Add(1)
		m.say("ERROR")
		return
	}
	m.mu.Lock()
	running := m.ln != nil
	m.mu.Unlock()
	if running {
		m.say("no change", "", "OK")
		return
	}
	ln, err := net.Listen("tcp", m.o.ServerAddr)
	if err != nil {
		m.say("ERROR")
		return
	}
	m.mu.Lock()
	m.ln = ln
	m.mu.Unlock()
	m.say("", "OK")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			id := m.freeLink(c, false)
			if id < 0 {
				c.Close()
				continue
			}
			m.say(fmt.Sprintf("%d,CONNECT", id))
			go m.pump(id, c)
		}
	}()
}

// freeLink stores c under the lowest (server) or highest free id.
func (m *Module) freeLink(c net.Conn, high bool) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range 5 {
		id := i
		if high {
			id = 4 - i
		}
		if m.links[id] == nil {
			m.links[id] = c
			return id
		}
	}
	return -1
}

func (m *Module) muxOn() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mux
}

func (m *Module) dial(args []string) {
	// id,"TCP","host",port
	if len(args) != 4 || args[1] != "TCP" || !m.muxOn() {
		m.say("ERROR")
		return
	}
	id, err1 := strconv.Atoi(args[0])
	port, err2 := strconv.Atoi(args[3])
	if err1 != nil || err2 != nil || id < 0 || id > 4 {
		m.say("ERROR")
		return
	}
	if m.Joined() == "" {
		m.say("no ip", "", "ERROR")
		return
	}
	if m.link(id, true) != nil {
		m.say("ALREADY CONNECTED", "", "ERROR")
		return
	}
	c, err := net.DialTimeout("tcp", m.o.Resolve(args[2], port), 3*time.Second)
	if err != nil {
		m.say(fmt.Sprintf("%d,CONNECT FAIL", id), "", "ERROR")
		return
	}
	if !m.setLink(id, nil, c) {
		c.Close()
		m.say("ALREADY CONNECTED", "", "ERROR")
		return
	}
	m.say(fmt.Sprintf("%d,CONNECT", id), "", "OK")
	go m.pump(id, c)
}

// pump forwards what the peer of link id sends as +IPD messages.
func (m *Module) pump(id int, c net.Conn) {
	buf := make([]byte, 1460) // one TCP segment, as the module passes them on
	for {
		n, err := c.Read(buf)
		if n > 0 {
			m.wmu.Lock()
			head := fmt.Sprintf("\r\n+IPD,%d,%d:", id, n)
			m.fromModule.transfer(len(head) + n)
			_ = m.uart.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, werr := io.WriteString(m.uart, head)
			if werr == nil {
				_, werr = m.uart.Write(buf[:n])
			}
			m.wmu.Unlock()
			if werr != nil {
				c.Close()
				return
			}
		}
		if err != nil {
			if m.setLink(id, c, nil) {
				c.Close()
				m.say(fmt.Sprintf("%d,CLOSED", id))
			}
			return
		}
	}
}

func (m *Module) send(br *bufio.Reader, args []string) {
	if len(args) != 2 {
		m.say("ERROR")
		return
	}
	id, err1 := strconv.Atoi(args[0])
	n, err2 := strconv.Atoi(args[1])
	c := m.link(id, err1 == nil)
	if err2 != nil || n < 1 || n > 2048 {
		m.say("ERROR")
		return
	}
	if c == nil {
		m.say("link is not valid", "", "ERROR")
		return
	}
	m.say("", "OK")
	m.write([]byte("> "))
	data := make([]byte, n)
	if _, err := io.ReadFull(br, data); err != nil {
		return
	}
	m.say("", fmt.Sprintf("Recv %d bytes", n))
	if m.o.BeforeSendOK != nil {
		m.o.BeforeSendOK()
	}
	_ = c.SetWriteDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(data); err != nil {
		m.say("", "SEND FAIL")
		return
	}
	m.say("", "SEND OK")
}
