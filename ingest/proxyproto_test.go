package ingest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/testkit"
)

// proxyV2 builds a v2 header: command (0 LOCAL, 1 PROXY), family byte,
// addresses and extra bytes (TLVs).
func proxyV2(cmd, fam byte, src, dst netip.AddrPort, tlv []byte) []byte {
	b := append([]byte(nil), proxyV2Sig...)
	b = append(b, 0x20|cmd, fam)
	var addrs []byte
	if src.IsValid() {
		addrs = append(addrs, src.Addr().AsSlice()...)
		addrs = append(addrs, dst.Addr().AsSlice()...)
		addrs = binary.BigEndian.AppendUint16(addrs, src.Port())
		addrs = binary.BigEndian.AppendUint16(addrs, dst.Port())
	}
	addrs = append(addrs, tlv...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addrs)))
	return append(b, addrs...)
}

func TestReadProxyHeader(t *testing.T) {
	ap := netip.MustParseAddrPort
	src4, dst4 := ap("192.0.2.7:40000"), ap("198.51.100.1:9998")
	src6, dst6 := ap("[2001:db8::7]:40000"), ap("[2001:db8::1]:9998")
	tests := []struct {
		name     string
		in       string
		src, dst netip.AddrPort
		wantErr  bool
	}{
		{name: "v1 TCP4", in: "PROXY TCP4 192.0.2.7 198.51.100.1 40000 9998\r\n", src: src4, dst: dst4},
		{name: "v1 TCP6", in: "PROXY TCP6 2001:db8::7 2001:db8::1 40000 9998\r\n", src: src6, dst: dst6},
		{name: "v1 UNKNOWN", in: "PROXY UNKNOWN\r\n"},
		{name: "v1 UNKNOWN with addresses", in: "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"},
		{name: "v1 longest", in: "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
			src: ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), dst: ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")},
		{name: "v1 too long", in: "PROXY TCP6 " + strings.Repeat("f", 100) + "\r\n", wantErr: true},
		{name: "v1 TCP4 with an IPv6 address", in: "PROXY TCP4 2001:db8::7 198.51.100.1 40000 9998\r\n", wantErr: true},
		{name: "v1 port out of range", in: "PROXY TCP4 192.0.2.7 198.51.100.1 70000 9998\r\n", wantErr: true},
		{name: "v1 port with a leading zero", in: "PROXY TCP4 192.0.2.7 198.51.100.1 040000 9998\r\n", wantErr: true},
		{name: "v1 missing field", in: "PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n", wantErr: true},
		{name: "v1 LF only", in: "PROXY TCP4 192.0.2.7 198.51.100.1 40000 9998\n", wantErr: true},
		{name: "v1 cut short", in: "PROXY TCP4 192.0.2.7", wantErr: true},
		{name: "v1 zone", in: "PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n", wantErr: true},
		{name: "not a header", in: "PRAXY TCP4 192.0.2.7 198.51.100.1 40000 9998\r\n", wantErr: true},
		{name: "legacy frame instead", in: "0123abcd", wantErr: true},
		{name: "v2 TCP4", in: string(proxyV2(1, 0x11, src4, dst4, nil)), src: src4, dst: dst4},
		{name: "v2 TCP6 with TLVs", in: string(proxyV2(1, 0x21, src6, dst6, []byte{0x04, 0, 2, 'h', 'i'})), src: src6, dst: dst6},
		{name: "v2 LOCAL", in: string(proxyV2(0, 0x00, netip.AddrPort{}, netip.AddrPort{}, nil))},
		{name: "v2 UDP keeps the connection's address", in: string(proxyV2(1, 0x12, src4, dst4, nil))},
		{name: "v2 address block too short", in: string(proxyV2(1, 0x21, src4, dst4, nil)), wantErr: true},
		{name: "v2 bad version", in: string(append(append([]byte(nil), proxyV2Sig...), 0x11, 0x11, 0, 0)), wantErr: true},
		{name: "v2 bad command", in: string(append(append([]byte(nil), proxyV2Sig...), 0x22, 0x11, 0, 0)), wantErr: true},
		{name: "v2 over the size bound", in: string(proxyV2(1, 0x11, src4, dst4, make([]byte, proxyV2Max))), wantErr: true},
		{name: "v2 cut short", in: string(proxyV2(1, 0x11, src4, dst4, nil))[:20], wantErr: true},
		{name: "v2 bad signature", in: "\r\n\r\n\x00\r\nQUIT!" + strings.Repeat("\x00", 8), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const after = "rest of the stream"
			in := tt.in
			if !tt.wantErr {
				in += after
			}
			br := bufio.NewReader(strings.NewReader(in))
			h, err := readProxyHeader(br)
			if tt.wantErr {
				if !errors.Is(err, errProxyHeader) {
					t.Fatalf("got %+v, %v; want a header error", h, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Src != tt.src || h.Dst != tt.dst {
				t.Fatalf("got %v → %v, want %v → %v", h.Src, h.Dst, tt.src, tt.dst)
			}
			if rest, _ := io.ReadAll(br); string(rest) != after {
				t.Fatalf("read into the stream: %q left", rest)
			}
		})
	}
}

func TestParseProxyFrom(t *testing.T) {
	got, err := ParseProxyFrom(" 10.0.0.0/8, 192.0.2.7,2001:db8::/32 ,::ffff:198.51.100.1,")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "198.51.100.1/32"}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "proxy.example", "10.0.0.1:80"} {
		if _, err := ParseProxyFrom(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzReadProxyHeader: any input gives a header or an error, never a
// panic, never reads past the header's end, and a header read is one that
// parses again the same from the bytes it consumed.
func FuzzReadProxyHeader(f *testing.F) {
	ap := netip.MustParseAddrPort
	f.Add([]byte("PROXY TCP4 192.0.2.7 198.51.100.1 40000 9998\r\nabc"))
	f.Add([]byte("PROXY TCP6 2001:db8::7 2001:db8::1 40000 9998\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(proxyV2(1, 0x11, ap("192.0.2.7:1"), ap("192.0.2.8:2"), nil))
	f.Add(proxyV2(1, 0x21, ap("[2001:db8::7]:1"), ap("[2001:db8::8]:2"), []byte{1, 0, 0}))
	f.Add(proxyV2(0, 0, netip.AddrPort{}, netip.AddrPort{}, nil))
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		h, err := readProxyHeader(br)
		if err != nil {
			return
		}
		used := len(in) - br.Buffered()
		if used > len(proxyV2Sig)+4+proxyV2Max || used > len(in) {
			t.Fatalf("consumed %d bytes", used)
		}
		if h.Src.IsValid() != h.Dst.IsValid() {
			t.Fatalf("half a header: %+v", h)
		}
		again, err := readProxyHeader(bufio.NewReader(bytes.NewReader(in[:used])))
		if err != nil || again != h {
			t.Fatalf("header %+v does not parse again from its %d bytes: %+v %v", h, used, again, err)
		}
	})
}

// dialProxied connects from a loopback address standing in for the proxy
// and writes a PROXY header for the device address src.
func dialProxied(t testing.TB, h *harness, proxy string, header []byte) net.Conn {
	t.Helper()
	c := dialFrom(t, h, proxy)
	if _, err := c.Write(header); err != nil {
		t.Fatal(err)
	}
	return c
}

// preFrameOf is how many connections of an address the edge counts as
// not having sent a valid frame yet.
func preFrameOf(h *harness, addr string) int {
	h.edge.mu.Lock()
	defer h.edge.mu.Unlock()
	if a := h.edge.addrs[addr]; a != nil {
		return a.preFrame
	}
	return 0
}

func v1Header(src, dst string) []byte {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	return []byte("PROXY TCP4 " + s.Addr().String() + " " + d.Addr().String() + " " + itoa(int(s.Port())) + " " + itoa(int(d.Port())) + "\r\n")
}

func itoa(i int) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(i)).String()[len("0.0.0.0:"):]
}

// TestProxyProtocol: the edge takes the device's address from a trusted
// proxy's header (v1, v2, over TLS too), refuses a header from anyone else,
// cuts a trusted connection without one, and applies the per-address limits
// to the device's address, not the proxy's.
func TestProxyProtocol(t *testing.T) {
	const proxy, stranger = "127.0.0.1", "127.0.0.2"
	from, _ := ParseProxyFrom(proxy)
	ap := netip.MustParseAddrPort
	tests := []struct {
		name string
		opts Options
		run  func(t *testing.T, h *harness)
	}{
		{"v1 and v2 give the device's address", Options{}, func(t *testing.T, h *harness) {
			talk(t, dialProxied(t, h, proxy, v1Header("192.0.2.7:40001", "198.51.100.1:9998")), 1)
			talk(t, dialProxied(t, h, proxy, proxyV2(1, 0x21, ap("[2001:db8::7]:40002"), ap("[2001:db8::1]:9998"), nil)), 2)
			talk(t, dialProxied(t, h, proxy, proxyV2(0, 0, netip.AddrPort{}, netip.AddrPort{}, nil)), 3) // LOCAL: the proxy's own
			got := map[string]string{}
			for _, m := range rawMessages(t, h.js, 3) {
				got[m.Headers().Get(bus.HeaderRemote)] = m.Headers().Get(bus.HeaderLocal)
			}
			if got["192.0.2.7:40001"] != "198.51.100.1:9998" || got["[2001:db8::7]:40002"] != "[2001:db8::1]:9998" || len(got) != 3 {
				t.Fatalf("remote → local %v", got)
			}
		}},
		{"a header from an unlisted address is refused", Options{}, func(t *testing.T, h *harness) {
			c := dialProxied(t, h, stranger, v1Header("192.0.2.7:40001", "198.51.100.1:9998"))
			talk(t, c, 1)
			if !closedByEdge(c, 10*time.Second) {
				t.Fatal("a PROXY header from an unlisted address was served")
			}
			metricIs(t, "connection_errors{proxy_untrusted}", func() float64 { return testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues("proxy_untrusted")) }, 1)
			talk(t, dialFrom(t, h, stranger), 2) // a device connecting directly still works
			if by := storedFrom(t, h, 1); by[stranger] != 1 {
				t.Fatalf("frames by address %v", by)
			}
		}},
		{"a device cannot smuggle a header of its own through the proxy", Options{}, func(t *testing.T, h *harness) {
			c := dialProxied(t, h, proxy, append(v1Header("192.0.2.7:1", "198.51.100.1:9998"), v1Header("203.0.113.9:1", "198.51.100.1:9998")...))
			talk(t, c, 1)
			if !closedByEdge(c, 10*time.Second) {
				t.Fatal("a second PROXY header inside a proxied stream was served")
			}
			metricIs(t, "connection_errors{proxy_untrusted}", func() float64 { return testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues("proxy_untrusted")) }, 1)
		}},
		{"a listed proxy without a header is cut", Options{}, func(t *testing.T, h *harness) {
			c := dialFrom(t, h, proxy)
			talk(t, c, 1)
			if !closedByEdge(c, 10*time.Second) {
				t.Fatal("a proxied connection without a header was served")
			}
			metricIs(t, "connection_errors{proxy_header}", func() float64 { return testutil.ToFloat64(h.edge.m.connErrors.WithLabelValues("proxy_header")) }, 1)
		}},
		{"limits see the device's address", Options{MaxPreFramePerIP: 1}, func(t *testing.T, h *harness) {
			dialProxied(t, h, proxy, v1Header("192.0.2.7:1", "198.51.100.1:9998")) // silent
			eventually(t, "the silent connection admitted", func() bool { return preFrameOf(h, "192.0.2.7") == 1 })
			if !closedByEdge(dialProxied(t, h, proxy, v1Header("192.0.2.7:2", "198.51.100.1:9998")), 10*time.Second) {
				t.Fatal("a second silent connection of one device address was not refused")
			}
			metricIs(t, "rejected{max_preframe_per_ip}", func() float64 { return testutil.ToFloat64(h.edge.m.rejected.WithLabelValues(refusePreFrameIP)) }, 1)
			// Another device through the same proxy is its own address.
			talk(t, dialProxied(t, h, proxy, v1Header("192.0.2.8:1", "198.51.100.1:9998")), 1)
			if by := storedFrom(t, h, 1); by["192.0.2.8"] != 1 {
				t.Fatalf("frames by address %v", by)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.ProxyFrom = from
			tt.run(t, start(t, tt.opts))
		})
	}

	t.Run("TLS after the header", func(t *testing.T) {
		files := testkit.NewTLSFiles(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		h := start(t, Options{ProxyFrom: from, TLSConfig: files.ServerConfig(t), TLSListener: ln})
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(proxy)}, Timeout: 5 * time.Second}
		raw, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		if _, err := raw.Write(v1Header("192.0.2.9:4444", "198.51.100.1:9997")); err != nil {
			t.Fatal(err)
		}
		cfg := files.ClientConfig(t)
		cfg.ServerName = "localhost"
		c := tls.Client(raw, cfg)
		talk(t, c, 1)
		m := rawMessages(t, h.js, 1)[0]
		if got := m.Headers().Get(bus.HeaderRemote); got != "192.0.2.9:4444" {
			t.Fatalf("remote %s through TLS", got)
		}
	})
}
