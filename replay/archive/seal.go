package archive

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// A sealed archive is an archive file encrypted whole with AES-256-GCM in
// the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár), as age
// does: the file is
//
//	magic "MPSEAL1\n" | salt (32 bytes) | chunk…
//	chunk = length (uint32, big-endian, of the ciphertext) | ciphertext
//
// Each chunk seals up to SealChunk bytes of the archive under a key derived
// with HKDF-SHA256 from the key file's contents and the salt; its nonce is
// the chunk's number (8 bytes, big-endian) and a final flag (1 on the last
// chunk, 0 otherwise), padded to 12 bytes. The magic and salt are the
// associated data of every chunk. So a chunk cannot be altered, moved,
// dropped or repeated, and a file cut after any chunk fails: the last one
// read was not marked final.
const (
	sealMagic = "MPSEAL1\n"
	sealSalt  = 32
	// SealChunk is the plaintext size of a sealed archive's chunks.
	SealChunk = 64 << 10
	sealInfo  = "medpipe archive v1 AES-256-GCM STREAM"
)

// Errors from sealed archives.
var (
	ErrSealed     = errors.New("archive: the file is encrypted (sealed): give its key file")
	ErrSealBroken = errors.New("archive: sealed file does not authenticate (wrong key, or damaged or cut short)")
)

// ReadKeyFile reads an archive key file: at least 32 bytes of secret (its
// trailing newline aside), e.g. `head -c 32 /dev/urandom | base64`.
func ReadKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("archive: key file: %w", err)
	}
	k := []byte(strings.TrimRight(string(b), "\r\n"))
	if len(k) < 32 {
		return nil, fmt.Errorf("archive: key file %s holds %d bytes: want at least 32", path, len(k))
	}
	return k, nil
}

func sealAEAD(key, salt []byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, key, salt, sealInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("archive: derive key: %w", err)
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func sealNonce(n uint64, final bool) []byte {
	nonce := make([]byte, 12)
	binary.BigEndian.PutUint64(nonce[3:11], n)
	if final {
		nonce[11] = 1
	}
	return nonce
}

// SealWriter encrypts what is written to it into a sealed archive. Close
// seals the last chunk; without it the file does not open.
type SealWriter struct {
	w    io.Writer
	aead cipher.AEAD
	ad   []byte
	buf  []byte
	out  []byte
	n    uint64
	err  error
}

// NewSealWriter starts a sealed file on w under key.
func NewSealWriter(w io.Writer, key []byte) (*SealWriter, error) {
	salt := make([]byte, sealSalt)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("archive: salt: %w", err)
	}
	aead, err := sealAEAD(key, salt)
	if err != nil {
		return nil, err
	}
	ad := append([]byte(sealMagic), salt...)
	if _, err := w.Write(ad); err != nil {
		return nil, err
	}
	return &SealWriter{w: w, aead: aead, ad: ad, buf: make([]byte, 0, SealChunk)}, nil
}

// Write buffers p, sealing every full chunk.
func (s *SealWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n := len(p)
	for len(p) > 0 {
		if len(s.buf) == SealChunk { // a full chunk is written only once more follows: the last must be marked final
			if s.err = s.chunk(false); s.err != nil {
				return 0, s.err
			}
		}
		k := min(len(p), SealChunk-len(s.buf))
		s.buf = append(s.buf, p[:k]...)
		p = p[k:]
	}
	return n, nil
}

func (s *SealWriter) chunk(final bool) error {
	s.out = s.aead.Seal(append(s.out[:0], 0, 0, 0, 0), sealNonce(s.n, final), s.buf, s.ad)
	binary.BigEndian.PutUint32(s.out, uint32(len(s.out)-4))
	s.n++
	s.buf = s.buf[:0]
	_, err := s.w.Write(s.out)
	return err
}

// Close seals the final chunk (possibly empty).
func (s *SealWriter) Close() error {
	if s.err != nil {
		return s.err
	}
	s.err = errors.New("archive: sealed writer closed")
	return s.chunk(true)
}

// IsSealed reports whether r (buffered) starts a sealed archive, without
// consuming anything.
func IsSealed(r *bufio.Reader) bool {
	b, err := r.Peek(len(sealMagic))
	return err == nil && string(b) == sealMagic
}

// sealReader decrypts a sealed archive chunk by chunk.
type sealReader struct {
	r     io.Reader
	aead  cipher.AEAD
	ad    []byte
	plain []byte
	rd    []byte
	n     uint64
	final bool
}

// OpenSealed returns the archive inside a sealed file. Every chunk is
// authenticated before any of its bytes is returned; a wrong key, a
// changed byte or a file cut short is ErrSealBroken.
func OpenSealed(r io.Reader, key []byte) (io.Reader, error) {
	ad := make([]byte, len(sealMagic)+sealSalt)
	if _, err := io.ReadFull(r, ad); err != nil || !bytes.HasPrefix(ad, []byte(sealMagic)) {
		return nil, errors.New("archive: not a sealed archive")
	}
	aead, err := sealAEAD(key, ad[len(sealMagic):])
	if err != nil {
		return nil, err
	}
	return &sealReader{r: r, aead: aead, ad: ad}, nil
}

func (s *sealReader) Read(p []byte) (int, error) {
	for len(s.plain) == 0 {
		if s.final {
			return 0, io.EOF
		}
		if err := s.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, s.plain)
	s.plain = s.plain[n:]
	return n, nil
}

func (s *sealReader) next() error {
	var l [4]byte
	if _, err := io.ReadFull(s.r, l[:]); err != nil {
		return fmt.Errorf("%w: chunk %d: %v", ErrSealBroken, s.n, err)
	}
	size := binary.BigEndian.Uint32(l[:])
	if size < uint32(s.aead.Overhead()) || size > SealChunk+uint32(s.aead.Overhead()) {
		return fmt.Errorf("%w: chunk %d has length %d", ErrSealBroken, s.n, size)
	}
	s.rd = append(s.rd[:0], make([]byte, size)...)
	if _, err := io.ReadFull(s.r, s.rd); err != nil {
		return fmt.Errorf("%w: chunk %d: %v", ErrSealBroken, s.n, err)
	}
	// A chunk opens as final or as not final, never both: the nonce differs.
	plain, err := s.aead.Open(s.plain[:0], sealNonce(s.n, false), s.rd, s.ad)
	if err != nil {
		if plain, err = s.aead.Open(s.plain[:0], sealNonce(s.n, true), s.rd, s.ad); err != nil {
			return fmt.Errorf("%w: chunk %d", ErrSealBroken, s.n)
		}
		s.final = true
		var extra [1]byte
		if n, _ := io.ReadFull(s.r, extra[:]); n > 0 {
			return fmt.Errorf("%w: data after the final chunk", ErrSealBroken)
		}
	}
	s.plain = plain
	s.n++
	return nil
}

// Unseal returns the archive bytes of r, sealed or not: a sealed file is
// decrypted with key (ErrSealed when key is nil). A key given for a file
// that is not sealed is an error too, so that a plain file is never taken
// for a protected one.
func Unseal(r io.Reader, key []byte) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	if !IsSealed(br) {
		if key != nil {
			return nil, errors.New("archive: a key was given but the file is not sealed")
		}
		return br, nil
	}
	if key == nil {
		return nil, ErrSealed
	}
	return OpenSealed(br, key)
}
