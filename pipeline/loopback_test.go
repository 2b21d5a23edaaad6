package pipeline

import (
	"net"
	"testing"
)

func TestLoopbackURL(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr net.Addr
		want string
	}{
		{"no listener", nil, ""},
		{"not TCP", &net.UnixAddr{Name: "/tmp/x", Net: "unix"}, ""},
		{"loopback", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4222}, "nats://127.0.0.1:4222"},
		{"every IPv4 interface", &net.TCPAddr{IP: net.IPv4zero, Port: 4222}, "nats://127.0.0.1:4222"},
		{"every IPv6 interface", &net.TCPAddr{IP: net.IPv6unspecified, Port: 4222}, "nats://[::1]:4222"},
		{"one interface", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 5), Port: 5000}, "nats://10.0.0.5:5000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := loopbackURL(tc.addr); got != tc.want {
				t.Errorf("loopbackURL(%v) = %q, want %q", tc.addr, got, tc.want)
			}
		})
	}
}
