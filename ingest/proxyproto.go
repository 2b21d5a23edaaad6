package ingest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// The PROXY protocol (HAProxy's spec, versions 1 and 2) lets a TCP proxy
// tell the edge whom it relays: a header before the first byte of the
// client's stream. It is parsed here rather than with a library because the
// edge needs little of it (TCP over IPv4/IPv6, LOCAL, UNKNOWN), must bound
// what it reads and when, and decides itself whom to believe (ProxyFrom).

// errProxyHeader is a missing or malformed PROXY header from a trusted proxy.
var errProxyHeader = errors.New("ingest: bad PROXY protocol header")

const (
	// proxyV1Max is the longest v1 header, CRLF included (the spec's bound).
	proxyV1Max = 107
	// proxyV2Max bounds a v2 header's address and TLV block. HAProxy sends
	// under 300 bytes; the spec lets a receiver refuse more than it needs.
	proxyV2Max = 1024
)

// proxyV2Sig starts every v2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// proxyHeader is what a PROXY header says of the connection it precedes.
type proxyHeader struct {
	// Src and Dst are the client's address and the address it connected
	// to; both are zero when the header says nothing about them (v1
	// UNKNOWN, v2 LOCAL or another family): the proxy's own connection,
	// its health check for instance.
	Src, Dst netip.AddrPort
}

// looksLikeProxyHeader reports whether b (a stream's first bytes, as many as
// have arrived) can start a PROXY header: for telling an untrusted sender of
// one apart from other bad bytes.
func looksLikeProxyHeader(b []byte) bool {
	n := min(len(b), len(proxyV2Sig))
	return n > 0 && (bytes.HasPrefix([]byte("PROXY "), b[:min(len(b), 6)]) || bytes.Equal(b[:n], proxyV2Sig[:n]))
}

// readProxyHeader reads a v1 or v2 header from br, and nothing after it.
func readProxyHeader(br *bufio.Reader) (proxyHeader, error) {
	first, err := br.Peek(1)
	if err != nil {
		return proxyHeader{}, err
	}
	switch first[0] {
	case 'P':
		return readProxyV1(br)
	case proxyV2Sig[0]:
		return readProxyV2(br)
	}
	return proxyHeader{}, fmt.Errorf("%w: first byte 0x%02x starts neither version", errProxyHeader, first[0])
}

// readProxyV1 reads "PROXY TCP4|TCP6|UNKNOWN src dst sport dport\r\n".
func readProxyV1(br *bufio.Reader) (proxyHeader, error) {
	line := make([]byte, 0, proxyV1Max)
	for {
		c, err := br.ReadByte()
		if err != nil {
			return proxyHeader{}, fmt.Errorf("%w: v1 header cut short: %w", errProxyHeader, noEOF(err))
		}
		line = append(line, c)
		if c == '\n' {
			break
		}
		if len(line) >= proxyV1Max {
			return proxyHeader{}, fmt.Errorf("%w: v1 header longer than %d bytes", errProxyHeader, proxyV1Max)
		}
	}
	return parseProxyV1(line)
}

func parseProxyV1(line []byte) (proxyHeader, error) {
	s, ok := strings.CutSuffix(string(line), "\r\n")
	if !ok {
		return proxyHeader{}, fmt.Errorf("%w: v1 header does not end in CRLF", errProxyHeader)
	}
	f := strings.Split(s, " ")
	if f[0] != "PROXY" || len(f) < 2 {
		return proxyHeader{}, fmt.Errorf("%w: v1 header does not start with \"PROXY \"", errProxyHeader)
	}
	if f[1] == "UNKNOWN" {
		return proxyHeader{}, nil // the rest, if any, is to be ignored
	}
	if (f[1] != "TCP4" && f[1] != "TCP6") || len(f) != 6 {
		return proxyHeader{}, fmt.Errorf("%w: v1 header is not TCP4/TCP6 with four fields", errProxyHeader)
	}
	var h proxyHeader
	for i, dst := range []*netip.AddrPort{&h.Src, &h.Dst} {
		ip, err := netip.ParseAddr(f[2+i])
		if err != nil || ip.Zone() != "" || ip.Is4() != (f[1] == "TCP4") {
			return proxyHeader{}, fmt.Errorf("%w: v1 address %q is not %s", errProxyHeader, f[2+i], f[1])
		}
		port, err := parsePort(f[4+i])
		if err != nil {
			return proxyHeader{}, err
		}
		*dst = netip.AddrPortFrom(ip, port)
	}
	return h, nil
}

// parsePort parses a decimal port without sign or leading zero, as v1 writes it.
func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%w: v1 port %q", errProxyHeader, s)
	}
	return uint16(n), nil
}

// readProxyV2 reads the binary header: signature, version and command,
// family and transport, length, then addresses and TLVs.
func readProxyV2(br *bufio.Reader) (proxyHeader, error) {
	var fixed [16]byte
	if _, err := io.ReadFull(br, fixed[:]); err != nil {
		return proxyHeader{}, fmt.Errorf("%w: v2 header cut short: %w", errProxyHeader, noEOF(err))
	}
	if !bytes.Equal(fixed[:12], proxyV2Sig) {
		return proxyHeader{}, fmt.Errorf("%w: v2 signature mismatch", errProxyHeader)
	}
	n := int(binary.BigEndian.Uint16(fixed[14:]))
	if n > proxyV2Max {
		return proxyHeader{}, fmt.Errorf("%w: v2 header of %d bytes, limit %d", errProxyHeader, n, proxyV2Max)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return proxyHeader{}, fmt.Errorf("%w: v2 header cut short: %w", errProxyHeader, noEOF(err))
	}
	return parseProxyV2(fixed, body)
}

func parseProxyV2(fixed [16]byte, body []byte) (proxyHeader, error) {
	if fixed[12]>>4 != 2 {
		return proxyHeader{}, fmt.Errorf("%w: v2 version %d", errProxyHeader, fixed[12]>>4)
	}
	switch fixed[12] & 0x0f {
	case 0: // LOCAL: the proxy's own connection; addresses are to be ignored
		return proxyHeader{}, nil
	case 1: // PROXY
	default:
		return proxyHeader{}, fmt.Errorf("%w: v2 command %d", errProxyHeader, fixed[12]&0x0f)
	}
	var size int
	switch fixed[13] {
	case 0x11: // TCP over IPv4
		size = 4
	case 0x21: // TCP over IPv6
		size = 16
	default:
		// UNSPEC, UDP or UNIX: nothing the edge can use as a device's
		// address; the spec says to keep the connection's own.
		return proxyHeader{}, nil
	}
	if len(body) < 2*size+4 {
		return proxyHeader{}, fmt.Errorf("%w: v2 address block of %d bytes", errProxyHeader, len(body))
	}
	src, _ := netip.AddrFromSlice(body[:size])
	dst, _ := netip.AddrFromSlice(body[size : 2*size])
	return proxyHeader{
		Src: netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[2*size:])),
		Dst: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(body[2*size+2:])),
	}, nil
}

// noEOF turns a stream ending inside a header into io.ErrUnexpectedEOF, so
// that it is not taken for a clean disconnect.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ParseProxyFrom parses a comma-separated list of addresses and CIDR
// prefixes for Options.ProxyFrom (the --proxy-protocol-from flag).
func ParseProxyFrom(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		ip, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("ingest: proxy address %q is neither an address nor a CIDR prefix", f)
		}
		ip = ip.Unmap()
		out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
	}
	return out, nil
}
