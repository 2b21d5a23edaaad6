package esp

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzModemInput feeds the reader whatever a noisy UART could carry,
// then checks that the driver still resynchronises and answers commands.
func FuzzModemInput(f *testing.F) {
	f.Add([]byte("\r\n+IPD,0,5:hello\r\n0,CONNECT\r\n"))
	f.Add([]byte("+IPD,9,99999:\r\nbusy p...\r\n> \r\nSEND OK\r\n"))
	f.Add([]byte("+IPD,1,3:ab"))
	f.Fuzz(func(t *testing.T, noise []byte) {
		fw, mod := net.Pipe()
		defer fw.Close()
		defer mod.Close()
		m := New(fw, Options{CommandTimeout: 200 * time.Millisecond})
		go func() {
			mod.Write(noise)
			// Answer every command line with OK, as a module would after noise.
			buf := make([]byte, 256)
			for {
				n, err := mod.Read(buf)
				if err != nil {
					return
				}
				if bytes.Contains(buf[:n], []byte("\r\n")) {
					io.WriteString(mod, "\r\nOK\r\n")
				}
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		// A +IPD header can swallow up to 8 KiB of what follows as payload;
		// the driver must still come back, within Sync's retries.
		_ = m.Sync(ctx)
	})
}

// FuzzParseSNTPTime: any answer either parses to a set clock (2020 on, whole
// seconds, UTC) that formats back to itself, or gives an error; never a
// panic.
func FuzzParseSNTPTime(f *testing.F) {
	f.Add("Tue Oct 19 17:47:56 2021")
	f.Add("Thu Aug  4 14:48:05 2026")
	f.Add("Thu Jan 01 00:00:00 1970")
	f.Add(" Mon Feb 29 23:59:60 2024\r")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseSNTPTime(s)
		if err != nil {
			return
		}
		if got.Year() < 2020 || got.Nanosecond() != 0 || got.Location() != time.UTC {
			t.Fatalf("%q parsed to %v", s, got)
		}
		again, err := ParseSNTPTime(got.Format(SNTPLayout))
		if err != nil || !again.Equal(got) {
			t.Fatalf("%q: %v formats to %q, which parses to %v, %v", s, got, got.Format(SNTPLayout), again, err)
		}
	})
}
