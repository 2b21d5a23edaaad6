package archive

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// testFrames makes n frames shaped like RAW's: hex ciphertext with the edge's headers.
func testFrames(n int) []Frame {
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	out := make([]Frame, n)
	for i := range out {
		data := make([]byte, 0, 200)
		for b := 0; b < 6; b++ {
			if b > 0 {
				data = append(data, '+')
			}
			for range 16 {
				data = fmt.Appendf(data, "%02x", rng.IntN(256))
			}
		}
		ts := t0.Add(time.Duration(i) * 50 * time.Millisecond)
		out[i] = Frame{
			Seq: uint64(i + 1), Time: ts, Subject: fmt.Sprintf("medpipe.raw.%d", i%4),
			Header: map[string][]string{
				"Medpipe-Conn":     {fmt.Sprintf("c%d", i%7)},
				"Medpipe-Frame":    {fmt.Sprint(i/7 + 1)},
				"Medpipe-Received": {ts.Format(time.RFC3339Nano)},
				"Nats-Msg-Id":      {fmt.Sprintf("c%d:%d", i%7, i/7+1)},
			},
			Data: data,
		}
	}
	return out
}

func writeArchive(t testing.TB, frames []Frame) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{Stream: "RAW", Origin: "RAW@1", Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	for i := range frames {
		if err := w.Write(&frames[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			frames := testFrames(n)
			b := writeArchive(t, frames)
			r, err := NewReader(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if h := r.Header(); h.Stream != "RAW" || h.Origin != "RAW@1" || h.Partitions != 4 || h.Version != Version {
				t.Fatalf("header %+v", h)
			}
			for i := 0; ; i++ {
				f, err := r.Next()
				if err == io.EOF {
					if i != n {
						t.Fatalf("%d frames, want %d", i, n)
					}
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				want := frames[i]
				if f.Seq != want.Seq || !f.Time.Equal(want.Time) || f.Subject != want.Subject ||
					!reflect.DeepEqual(f.Header, want.Header) || !bytes.Equal(f.Data, want.Data) {
					t.Fatalf("frame %d: got %+v, want %+v", i, f, want)
				}
			}
			m, ok := r.Manifest()
			if !ok || m.Frames != uint64(n) || m.Stream != "RAW" {
				t.Fatalf("manifest %+v", m)
			}
			if n > 0 && (m.FirstSeq != 1 || m.LastSeq != uint64(n) || !m.FirstTime.Equal(frames[0].Time) || !m.LastTime.Equal(frames[n-1].Time)) {
				t.Fatalf("manifest ranges %+v", m)
			}
		})
	}
}

func TestWriterRefusesOutOfOrder(t *testing.T) {
	w, err := NewWriter(io.Discard, Header{Stream: "RAW"})
	if err != nil {
		t.Fatal(err)
	}
	fs := testFrames(2)
	if err := w.Write(&fs[1]); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(&fs[0]); err == nil {
		t.Fatal("a frame with a lower sequence was accepted")
	}
}

// TestCorruptionIsLocated damages a good archive in several ways; Verify
// must fail with a CorruptError naming the frame where reading stopped.
func TestCorruptionIsLocated(t *testing.T) {
	const n = 2000
	good := writeArchive(t, testFrames(n))
	if _, _, err := Verify(bytes.NewReader(good)); err != nil {
		t.Fatalf("intact archive: %v", err)
	}
	flip := func(at int) []byte {
		b := bytes.Clone(good)
		b[at] ^= 0x40
		return b
	}
	cases := []struct {
		name      string
		data      []byte
		wantFrame func(uint64) bool
	}{
		{"byte flipped in the middle", flip(len(good) / 2), func(f uint64) bool { return f > 0 && f < n }},
		{"byte flipped near the end", flip(len(good) - 20), func(f uint64) bool { return f > 0 && f <= n }},
		{"truncated", good[:len(good)*3/4], func(f uint64) bool { return f > 0 && f < n }},
		{"trailing garbage", append(bytes.Clone(good), "garbage"...), func(f uint64) bool { return f == n }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := Verify(bytes.NewReader(c.data))
			var ce *CorruptError
			if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("want a CorruptError, got %v", err)
			}
			if !c.wantFrame(ce.Frame) || ce.FileOffset <= 0 {
				t.Fatalf("damage located at frame %d, file offset %d: %v", ce.Frame, ce.FileOffset, err)
			}
			t.Logf("%v", err)
		})
	}
	if _, _, err := Verify(bytes.NewReader([]byte("not an archive at all"))); err == nil {
		t.Fatal("a text file verified")
	}
}

// FuzzReader: any decompressed content either reads as an archive or
// fails with an error; never a panic, never unbounded memory. It fuzzes
// the record layer (zstd's own decoder is fuzzed upstream, and through
// FuzzArchive's seeds here).
func FuzzReader(f *testing.F) {
	f.Add([]byte{}) // and testdata/fuzz/FuzzReader
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := newContentReader(&countingReader{r: bytes.NewReader(nil)}, bytes.NewReader(b))
		if err != nil {
			return
		}
		for range 10000 {
			if _, err := r.Next(); err != nil {
				return
			}
		}
	})
}

// TestSeedCorpus: the checked-in fuzz seeds are an intact archive and its content.
func TestSeedCorpus(t *testing.T) {
	seed := func(path string) []byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		_, quoted, _ := strings.Cut(string(b), "[]byte(")
		s, err := strconv.Unquote(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(quoted), ")")))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return []byte(s)
	}
	a := seed("testdata/fuzz/FuzzArchive/three-frames")
	if _, m, err := Verify(bytes.NewReader(a)); err != nil || m.Frames != 3 {
		t.Fatalf("seed archive: %v, %+v", err, m)
	}
	if c := seed("testdata/fuzz/FuzzReader/three-frames"); !bytes.Equal(c, content(t, a)) {
		t.Fatal("FuzzReader's seed is not the seed archive's content")
	}
}

// content decompresses an archive.
func content(t testing.TB, archive []byte) []byte {
	d, err := zstd.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b, err := io.ReadAll(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzArchive runs whole files, compressed, through Verify.
func FuzzArchive(f *testing.F) {
	f.Add([]byte{}) // and testdata/fuzz/FuzzArchive: built seeds would make the fuzzer stall in zstd's encoder
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = Verify(bytes.NewReader(b))
	})
}

// FuzzFrameRecord: the frame record decoder on arbitrary bytes, and
// encode → decode is the identity.
func FuzzFrameRecord(f *testing.F) {
	for _, fr := range testFrames(3) {
		f.Add(appendFrame(nil, &fr))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fr Frame
		if err := parseFrame(b, &fr); err != nil {
			return
		}
		again := appendFrame(nil, &fr)
		var fr2 Frame
		if err := parseFrame(again, &fr2); err != nil {
			t.Fatalf("re-encoded frame does not parse: %v", err)
		}
		if fr.Seq != fr2.Seq || !fr.Time.Equal(fr2.Time) || fr.Subject != fr2.Subject || !bytes.Equal(fr.Data, fr2.Data) || !reflect.DeepEqual(fr.Header, fr2.Header) {
			t.Fatal("encode/decode is not the identity")
		}
	})
}
