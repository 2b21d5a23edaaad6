package wire

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

var errEOF = io.EOF

const block = "798035e8c03e36030ddd79b2b2fd23f5"

func TestFrameReader(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		max     int
		min     int
		frames  []string
		wantErr error
	}{
		{name: "one block", in: block, frames: []string{block}},
		{name: "two frames", in: block + "+" + block + block, frames: []string{block + "+" + block, block}},
		{name: "uppercase hex", in: strings.ToUpper(block), frames: []string{strings.ToUpper(block)}},
		{name: "empty", in: "", frames: nil},
		{name: "short block", in: block[:31], wantErr: ErrTruncated},
		{name: "trailing plus", in: block + "+", wantErr: ErrTruncated},
		{name: "double plus", in: block + "++" + block, wantErr: ErrNotHex},
		{name: "non-hex", in: block[:10] + "z" + block[11:], wantErr: ErrNotHex},
		{name: "newline between frames", in: block + "\n" + block, frames: []string{block}, wantErr: ErrNotHex},
		{name: "too long", in: block + "+" + block, max: 1, wantErr: ErrFrameTooLong},
		{name: "exactly max", in: block + "+" + block, max: 2, frames: []string{block + "+" + block}},
		{name: "too short", in: block + "+" + block + block, min: 2, frames: []string{block + "+" + block}, wantErr: ErrFrameTooShort},
		{name: "hex without plus", in: strings.Repeat(block, 100), min: MinReadingBlocks, wantErr: ErrFrameTooShort},
		{name: "over the default bound", in: strings.Repeat(block+"+", DefaultMaxBlocks) + block, wantErr: ErrFrameTooLong},
		{name: "at the default bound", in: strings.Repeat(block+"+", DefaultMaxBlocks-1) + block, frames: []string{strings.Repeat(block+"+", DefaultMaxBlocks-1) + block}},
		{name: "v2 magic byte", in: "\xa5abc", wantErr: ErrNotHex},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := NewFrameReader(strings.NewReader(tt.in), FrameReaderOptions{MaxBlocks: tt.max, MinBlocks: tt.min})
			var got []string
			var err error
			for {
				var f []byte
				if f, err = fr.Next(); err != nil {
					break
				}
				got = append(got, string(f))
			}
			if strings.Join(got, ",") != strings.Join(tt.frames, ",") {
				t.Errorf("frames %q, want %q", got, tt.frames)
			}
			want := tt.wantErr
			if want == nil {
				want = io.EOF
			}
			if !errors.Is(err, want) {
				t.Errorf("error %v, want %v", err, want)
			}
		})
	}
}

// TestFrameReaderIdleGap checks that on a connection a frame is delivered
// after the idle gap, before the next frame starts, and that a frame split
// inside a block waits for the rest.
func TestFrameReaderIdleGap(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	fr := NewFrameReader(server, FrameReaderOptions{IdleGap: 20 * time.Millisecond, FrameTimeout: 2 * time.Second})
	frames := make(chan string, 4)
	errs := make(chan error, 1)
	go func() {
		for {
			f, err := fr.Next()
			if err != nil {
				errs <- err
				return
			}
			frames <- string(f)
		}
	}()
	write := func(s string) {
		if _, err := client.Write([]byte(s)); err != nil {
			t.Error(err)
		}
	}
	write(block + "+" + block[:7])
	time.Sleep(50 * time.Millisecond) // longer than the gap, but inside a block
	write(block[7:])
	select {
	case f := <-frames:
		if f != block+"+"+block {
			t.Fatalf("frame %q", f)
		}
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(2 * time.Second):
		t.Fatal("frame not delivered after the idle gap")
	}
	client.Close()
	if err := <-errs; !errors.Is(err, io.EOF) {
		t.Fatalf("after close: %v", err)
	}
}

func TestFrameReaderIdleTimeout(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	fr := NewFrameReader(server, FrameReaderOptions{IdleTimeout: 30 * time.Millisecond})
	if _, err := fr.Next(); !errors.Is(err, ErrIdle) {
		t.Fatalf("got %v, want ErrIdle", err)
	}
}

// TestReadingBounds: the legacy frame bounds follow from what a reading can
// be, and a reading at either bound seals into that many blocks.
func TestReadingBounds(t *testing.T) {
	long, short := Reading{}, Reading{}
	for f := range long {
		long[f], short[f] = strings.Repeat("9", maxValueLen), "1"
	}
	k := NewLegacyKey(Device{ID: "d"})
	for _, tt := range []struct {
		r      Reading
		blocks int
	}{{long, DefaultMaxBlocks}, {short, MinReadingBlocks}} {
		if err := tt.r.Validate(); err != nil {
			t.Fatal(err)
		}
		if got := BlocksInFrame(len(k.Seal(nil, Pico, tt.r.AppendJSON(nil)))); got != tt.blocks {
			t.Fatalf("%s seals into %d blocks, bound %d", tt.r.AppendJSON(nil), got, tt.blocks)
		}
	}
	if MinReadingBlocks >= DefaultMaxBlocks || DefaultMaxBlocks > 32 {
		t.Fatalf("bounds [%d, %d]", MinReadingBlocks, DefaultMaxBlocks)
	}
	t.Logf("a reading is %d to %d bytes: %d to %d blocks", MinReadingLen, MaxReadingLen, MinReadingBlocks, DefaultMaxBlocks)
}

func FuzzFrameReader(f *testing.F) {
	f.Add([]byte(block + "+" + block + block))
	f.Add([]byte(block + "+"))
	f.Add([]byte("+" + block))
	f.Add([]byte{0xa5, 0x01})
	f.Fuzz(func(t *testing.T, in []byte) {
		const maxBlocks, minBlocks = 6, 2
		fr := NewFrameReader(strings.NewReader(string(in)), FrameReaderOptions{MaxBlocks: maxBlocks, MinBlocks: minBlocks})
		total := 0
		for {
			fr0, err := fr.Next()
			if err != nil {
				break
			}
			if n := BlocksInFrame(len(fr0)); n > maxBlocks || n < minBlocks {
				t.Fatalf("frame of %d blocks outside [%d, %d]", n, minBlocks, maxBlocks)
			}
			// Every frame the reader accepts must decode.
			ct, err := DecodeFrame(nil, fr0)
			if err != nil {
				t.Fatalf("accepted frame %q does not decode: %v", fr0, err)
			}
			if len(ct) != BlocksInFrame(len(fr0))*BlockSize {
				t.Fatalf("decoded %d bytes from %d", len(ct), len(fr0))
			}
			total += len(fr0)
			if total > len(in) {
				t.Fatal("more frame bytes than input")
			}
		}
	})
}
