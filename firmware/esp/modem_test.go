package esp_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/medpipe/medpipe/firmware/esp"
	"github.com/medpipe/medpipe/firmware/esp/espfake"
	"github.com/medpipe/medpipe/testkit"
)

func start(t *testing.T, o espfake.Options) (*esp.Modem, *espfake.Module) {
	t.Helper()
	mod, uart := espfake.New(o)
	t.Cleanup(func() { mod.Close() })
	m := esp.New(uart, esp.Options{CommandTimeout: time.Second})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	return m, mod
}

// echoServer is a real loopback TCP server that echoes, upper-cased.
func echoServer(t *testing.T) *net.TCPAddr {
	t.Helper()
	return testkit.ServeTCP(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			c.Write(bytes.ToUpper(buf[:n]))
		}
	})
}

func TestStationDialSendReceive(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	addr := echoServer(t)
	m, mod := start(t, espfake.Options{Networks: map[string]string{"ward-7": "s3cret-pass"}})
	if err := m.SetMode(ctx, esp.ModeStation); err != nil {
		t.Fatal(err)
	}
	if err := m.Join(ctx, "ward-7", "wrong-pass"); !errors.Is(err, esp.ErrCommand) {
		t.Fatalf("join with a wrong password: %v", err)
	}
	if err := m.Join(ctx, "ward-7", "s3cret-pass"); err != nil {
		t.Fatal(err)
	}
	if mod.Joined() != "ward-7" {
		t.Fatalf("joined %q", mod.Joined())
	}
	l, err := m.Dial(ctx, "127.0.0.1", addr.Port)
	if err != nil {
		t.Fatal(err)
	}
	// More than one CIPSEND's worth, to exercise chunking.
	msg := bytes.Repeat([]byte("reading,"), 600)
	if _, err := l.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	l.SetReadTimeout(5 * time.Second)
	if _, err := io.ReadFull(l, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.ToUpper(msg)) {
		t.Fatal("echo differs")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Write([]byte("x")); !errors.Is(err, esp.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

func TestBusyGarbageAndResync(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, mod := start(t, espfake.Options{})
	mod.Busy(3)
	if err := m.SetMode(ctx, esp.ModeAccessPoint); err != nil {
		t.Fatalf("busy module: %v", err)
	}
	if m.Stats().Busy != 3 {
		t.Fatalf("busy answers counted: %d", m.Stats().Busy)
	}
	// A reboot's boot noise, a half line and a fake +IPD header.
	mod.Garbage([]byte("\x00\xfe ets Jan  8 2013,rst cause:2\r\n+IPD,9,zz:\r\nhalf a line"))
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.StartAP(ctx, "medpipe-dev", "short", 5); err == nil {
		t.Fatal("a WPA2 password under 8 characters was accepted")
	}
	if err := m.StartAP(ctx, "medpipe-dev", "long enough", 5); err != nil {
		t.Fatal(err)
	}
	if ap := mod.AccessPoint(); ap.SSID != "medpipe-dev" || ap.Password != "long enough" || ap.Encryption != 3 {
		t.Fatalf("access point %+v", ap)
	}
	if m.Stats().Garbage == 0 {
		t.Fatal("garbage not counted")
	}
}

func TestServerAcceptAndPeerClose(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, mod := start(t, espfake.Options{})
	if err := m.SetMode(ctx, esp.ModeAccessPoint); err != nil {
		t.Fatal(err)
	}
	if err := m.Listen(ctx, 80); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", mod.ServerAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	l, err := m.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	buf := make([]byte, 64)
	l.SetReadTimeout(5 * time.Second)
	n, err := l.Read(buf)
	if err != nil || string(buf[:n]) != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	c.Close()
	for {
		if _, err := l.Read(buf); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("after the peer closed: %v", err)
		}
	}
}

func TestPasswordsStayOutOfErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, _ := start(t, espfake.Options{})
	err := m.Join(ctx, "ward-7", "hunter22-secret") // station mode not set: ERROR
	if err == nil || bytes.Contains([]byte(err.Error()), []byte("hunter22")) {
		t.Fatalf("join error %v", err)
	}
}

// TestSNTP: the module answers 1970 until SNTP is configured and it has a
// network, then its clock; both padding styles of the day parse.
func TestSNTP(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	now := time.Date(2026, 12, 2, 5, 4, 3, 0, time.UTC)
	m, mod := start(t, espfake.Options{Networks: map[string]string{"ward-7": "s3cret-pass"}, Now: func() time.Time { return now }})
	if _, err := m.SNTPTime(ctx); !errors.Is(err, esp.ErrNotSynced) {
		t.Fatalf("before CIPSNTPCFG: %v", err)
	}
	if err := m.SNTP(ctx); err == nil {
		t.Fatal("SNTP without a server was accepted")
	}
	if err := m.SNTP(ctx, "ntp.ward7.example", "pool.ntp.org"); err != nil {
		t.Fatal(err)
	}
	if got := mod.SNTPServers(); len(got) != 2 || got[0] != "ntp.ward7.example" {
		t.Fatalf("servers %q", got)
	}
	if _, err := m.SNTPTime(ctx); !errors.Is(err, esp.ErrNotSynced) {
		t.Fatalf("before joining a network: %v", err)
	}
	if err := m.SetMode(ctx, esp.ModeStation); err != nil {
		t.Fatal(err)
	}
	if err := m.Join(ctx, "ward-7", "s3cret-pass"); err != nil {
		t.Fatal(err)
	}
	if got, err := m.SNTPTime(ctx); err != nil || !got.Equal(now) {
		t.Fatalf("SNTP time %v, err %v; want %v", got, err, now)
	}

	tests := []struct {
		in      string
		want    time.Time
		wantErr error
	}{
		{in: "Tue Oct 19 17:47:56 2021", want: time.Date(2021, 10, 19, 17, 47, 56, 0, time.UTC)},
		{in: "Thu Aug 04 14:48:05 2026", want: time.Date(2026, 8, 4, 14, 48, 5, 0, time.UTC)},
		{in: "Thu Aug  4 14:48:05 2026", want: time.Date(2026, 8, 4, 14, 48, 5, 0, time.UTC)},
		{in: "Thu Jan 01 00:00:00 1970", wantErr: esp.ErrNotSynced},
		{in: "Thu Jan 01 00:00:12 1970", wantErr: esp.ErrNotSynced},
	}
	for _, tt := range tests {
		got, err := esp.ParseSNTPTime(tt.in)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("%q: %v, want %v", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("%q: %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "yesterday", "Tue Oct 19 25:47:56 2021"} {
		if _, err := esp.ParseSNTPTime(bad); err == nil || errors.Is(err, esp.ErrNotSynced) {
			t.Errorf("%q: %v, want a parse error", bad, err)
		}
	}
}

// TestModuleRefusesWhatRealOneRefuses: the fake keeps the AT firmware's
// rules (Espressif's AT instruction set, AT+CIPMUX and AT+CIPSERVER): no
// server without CIPMUX=1, no CIPMUX change while a server or a link is up;
// StopServer makes the change possible again.
func TestModuleRefusesWhatRealOneRefuses(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, mod := start(t, espfake.Options{})
	if _, err := m.Command(ctx, "+CWMODE=2", 0); err != nil {
		t.Fatal(err)
	}
	if err := m.Listen(ctx, 80); !errors.Is(err, esp.ErrCommand) {
		t.Fatalf("CIPSERVER=1 with CIPMUX=0: %v", err)
	}
	if err := m.SetMode(ctx, esp.ModeAccessPoint); err != nil {
		t.Fatal(err)
	}
	if err := m.Listen(ctx, 80); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", mod.ServerAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l, err := m.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Command(ctx, "+CIPMUX=1", 0); !errors.Is(err, esp.ErrCommand) {
		t.Fatalf("CIPMUX=1 with a server running: %v", err)
	}
	if err := m.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	if !l.Closed() || mod.ServerAddr() != nil {
		t.Fatalf("after StopServer: link closed %v, server %v", l.Closed(), mod.ServerAddr())
	}
	if err := m.SetMode(ctx, esp.ModeStation); err != nil {
		t.Fatalf("station mode after the server is gone: %v", err)
	}
	if n := mod.Refused.Load(); n != 2 {
		t.Fatalf("module refused %d commands, want the 2 provoked", n)
	}
}

// TestUARTIsMetered: at 115,200 baud (8N1) a byte takes 86.8 µs each way;
// 4,000 bytes sent take at least 0.34 s of line time, and the module's
// counters say so.
func TestUARTIsMetered(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	addr := echoServer(t)
	m, mod := start(t, espfake.Options{Networks: map[string]string{"ward-7": "s3cret-pass"}})
	if err := m.SetMode(ctx, esp.ModeStation); err != nil {
		t.Fatal(err)
	}
	if err := m.Join(ctx, "ward-7", "s3cret-pass"); err != nil {
		t.Fatal(err)
	}
	l, err := m.Dial(ctx, "127.0.0.1", addr.Port)
	if err != nil {
		t.Fatal(err)
	}
	before := mod.Link()
	data := bytes.Repeat([]byte("x"), 4000)
	start := time.Now()
	if _, err := l.WriteContext(ctx, data); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	after := mod.Link()
	sent := after.ToModule - before.ToModule
	line := time.Duration(sent) * 10 * time.Second / espfake.DefaultBaudRate
	t.Logf("4,000 payload bytes: %d bytes to the module (AT handshake included), %v of line time, write took %v", sent, line, took)
	if sent < int64(4000+2*len("AT+CIPSEND=4,2048\r\n")) {
		t.Errorf("only %d bytes metered", sent)
	}
	if d := after.ToModuleBusy - before.ToModuleBusy - line; d < -time.Microsecond || d > time.Microsecond {
		t.Errorf("busy %v, want %v", after.ToModuleBusy-before.ToModuleBusy, line)
	}
	if took < line-5*time.Millisecond {
		t.Errorf("the write took %v, less than its %v on the line", took, line)
	}
}
