package archive

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"
)

func sealed(t testing.TB, key, plain []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := NewSealWriter(&b, key)
	if err != nil {
		t.Fatal(err)
	}
	// Odd write sizes cross chunk boundaries.
	for p := plain; len(p) > 0; {
		n := min(len(p), 10007)
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func unseal(key, file []byte) ([]byte, error) {
	r, err := OpenSealed(bytes.NewReader(file), key)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

func TestSealRoundTripAndAttacks(t *testing.T) {
	key := bytes.Repeat([]byte("k"), 32)
	for _, size := range []int{0, 1, SealChunk - 1, SealChunk, SealChunk + 1, 3*SealChunk + 17} {
		plain := make([]byte, size)
		rand.Read(plain)
		file := sealed(t, key, plain)
		got, err := unseal(key, file)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("size %d: round trip: %v", size, err)
		}
		if size > 16 && bytes.Contains(file, plain[:16]) {
			t.Fatalf("size %d: plaintext in the sealed file", size)
		}
		attacks := map[string][]byte{
			"wrong key":      nil,
			"flipped byte":   append([]byte(nil), file...),
			"cut at a chunk": nil,
			"extra data":     append(append([]byte(nil), file...), 0),
		}
		attacks["flipped byte"][len(file)-1] ^= 1
		if size > SealChunk {
			attacks["cut at a chunk"] = file[:len(sealMagic)+sealSalt+4+SealChunk+16]
		} else {
			delete(attacks, "cut at a chunk")
		}
		for name, f := range attacks {
			k := key
			if name == "wrong key" {
				f, k = file, bytes.Repeat([]byte("x"), 32)
			}
			if _, err := unseal(k, f); !errors.Is(err, ErrSealBroken) {
				t.Errorf("size %d, %s: %v, want ErrSealBroken", size, name, err)
			}
		}
	}
}

func FuzzOpenSealed(f *testing.F) {
	key := bytes.Repeat([]byte("k"), 32)
	f.Add(sealed(f, key, []byte("hello archive")))
	f.Add([]byte(sealMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := OpenSealed(bytes.NewReader(b), key)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, r) // must end, with data or an error, never panic
	})
}
