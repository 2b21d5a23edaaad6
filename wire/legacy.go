package wire

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
)

// Variant is one of the two legacy encoders in the field.
type Variant uint8

// Legacy variants.
const (
	// Pico is the microcontroller firmware: one CBC chain over the message.
	Pico Variant = iota + 1
	// Pseudo is the old desktop simulator: every block encrypted alone with
	// a fresh CBC(key, IV), i.e. E(key, block XOR IV).
	Pseudo
)

// String returns "pico" or "pseudo".
func (v Variant) String() string {
	switch v {
	case Pico:
		return "pico"
	case Pseudo:
		return "pseudo"
	}
	return "unknown"
}

// ParseVariant parses "pico" or "pseudo".
func ParseVariant(s string) (Variant, error) {
	switch s {
	case "pico":
		return Pico, nil
	case "pseudo":
		return Pseudo, nil
	}
	return 0, fmt.Errorf("wire: unknown legacy variant %q (want pico or pseudo)", s)
}

// BlockSize is the AES block size; legacy messages are cut into blocks of it.
const BlockSize = aes.BlockSize

// padByte pads a legacy message's last block.
const padByte = '&'

// Errors from the legacy codec.
var (
	ErrNotHex     = errors.New("wire: frame is not hex blocks joined by '+'")
	ErrBadPadding = errors.New("wire: message is not padded with '&'")
)

// LegacyKey is a device's pre-expanded AES-128 key and its IV. It is safe for
// concurrent use.
type LegacyKey struct {
	block cipher.Block
	iv    [BlockSize]byte
}

// NewLegacyKey expands a device's key for the legacy protocol.
func NewLegacyKey(d Device) *LegacyKey {
	b, err := aes.NewCipher(d.Key[:])
	if err != nil { // only on a wrong key length, which [16]byte rules out
		panic(err)
	}
	return &LegacyKey{block: b, iv: d.IV}
}

// Seal pads plaintext with '&', encrypts it with variant v and appends the
// wire text (hex blocks joined by '+') to dst.
func (k *LegacyKey) Seal(dst []byte, v Variant, plaintext []byte) []byte {
	n := LegacyBlocks(len(plaintext))
	var blk, prev [BlockSize]byte
	prev = k.iv
	for i := range n {
		start := i * BlockSize
		m := copy(blk[:], plaintext[min(start, len(plaintext)):])
		for j := m; j < BlockSize; j++ {
			blk[j] = padByte
		}
		if v == Pseudo {
			prev = k.iv
		}
		for j := range blk {
			blk[j] ^= prev[j]
		}
		k.block.Encrypt(blk[:], blk[:])
		prev = blk
		if i > 0 {
			dst = append(dst, '+')
		}
		dst = appendHex(dst, blk[:])
	}
	return dst
}

// FirstBlock decrypts the first block of ct, which both variants encrypt the
// same way, into out. It is the cheap test of whether a key may fit.
func (k *LegacyKey) FirstBlock(out *[BlockSize]byte, ct []byte) {
	k.block.Decrypt(out[:], ct[:BlockSize])
	for j := range out {
		out[j] ^= k.iv[j]
	}
}

// LooksLikeReading reports whether a decrypted first block can start a
// reading: '{' then printable ASCII. A wrong key passes with probability
// about 2^-29, so a full Open must still confirm a candidate.
func LooksLikeReading(first *[BlockSize]byte) bool {
	if first[0] != '{' {
		return false
	}
	for _, c := range first[1:] {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// Open decrypts binary ciphertext ct (whole blocks) and parses the reading.
// It tries variant prefer first (Pico when zero) and then the other, and
// returns the variant that produced a valid reading. buf is scratch space
// reused when large enough.
func (k *LegacyKey) Open(buf []byte, ct []byte, prefer Variant) (Reading, Variant, error) {
	if len(ct) == 0 || len(ct)%BlockSize != 0 {
		return Reading{}, 0, fmt.Errorf("%w: ciphertext of %d bytes", ErrNotHex, len(ct))
	}
	n := len(ct)
	if cap(buf) < 2*n {
		buf = make([]byte, 2*n)
	}
	raw, plain := buf[:n], buf[n:2*n]
	for i := 0; i < n; i += BlockSize {
		k.block.Decrypt(raw[i:i+BlockSize], ct[i:i+BlockSize])
	}
	if prefer != Pseudo {
		prefer = Pico
	}
	r, err := k.unchain(plain, raw, ct, prefer)
	if err == nil {
		return r, prefer, nil
	}
	if n == BlockSize { // one block: both variants are the same
		return Reading{}, 0, err
	}
	other := Pico + Pseudo - prefer
	r, err2 := k.unchain(plain, raw, ct, other)
	if err2 == nil {
		return r, other, nil
	}
	return Reading{}, 0, err
}

// unchain XORs the raw block decryptions with the chaining value of variant
// v, strips the padding and parses the reading.
func (k *LegacyKey) unchain(plain, raw, ct []byte, v Variant) (Reading, error) {
	for i := 0; i < len(raw); i += BlockSize {
		chain := k.iv[:]
		if v == Pico && i > 0 {
			chain = ct[i-BlockSize : i]
		}
		for j := range BlockSize {
			plain[i+j] = raw[i+j] ^ chain[j]
		}
	}
	text, err := trimPadding(plain)
	if err != nil {
		return Reading{}, err
	}
	return ParseReading(text)
}

// trimPadding removes the 1 to 16 '&' that end every legacy message.
func trimPadding(p []byte) ([]byte, error) {
	end := len(p)
	for end > 0 && p[end-1] == padByte {
		end--
	}
	if pad := len(p) - end; pad < 1 || pad > BlockSize {
		return nil, fmt.Errorf("%w: %d padding bytes", ErrBadPadding, pad)
	}
	return p[:end], nil
}

// DecodeFrame turns a legacy frame (hex blocks joined by '+') into binary
// ciphertext appended to dst.
func DecodeFrame(dst, frame []byte) ([]byte, error) {
	const blockText = 2 * BlockSize
	if len(frame) < blockText || (len(frame)+1)%(blockText+1) != 0 {
		return dst, fmt.Errorf("%w: %d bytes is not a whole number of blocks", ErrNotHex, len(frame))
	}
	for i := 0; i < len(frame); i += blockText + 1 {
		if i > 0 && frame[i-1] != '+' {
			return dst, fmt.Errorf("%w: byte %d is %s, want '+'", ErrNotHex, i-1, quoteByte(frame[i-1]))
		}
		for j := i; j < i+blockText; j += 2 {
			hi, ok1 := unhex(frame[j])
			lo, ok2 := unhex(frame[j+1])
			if !ok1 || !ok2 {
				at := j
				if ok1 {
					at = j + 1
				}
				return dst, fmt.Errorf("%w: byte %d is %s", ErrNotHex, at, quoteByte(frame[at]))
			}
			dst = append(dst, hi<<4|lo)
		}
	}
	return dst, nil
}

// LegacyBlocks returns the number of blocks a legacy message of n plaintext
// bytes is sealed into: padding adds 1 to 16 '&', a whole block of them when
// n is already a multiple of BlockSize.
func LegacyBlocks(n int) int { return n/BlockSize + 1 }

// BlocksInFrame returns the number of blocks a well-formed frame of n bytes holds.
func BlocksInFrame(n int) int { return (n + 1) / (2*BlockSize + 1) }

const hexDigits = "0123456789abcdef"

func appendHex(dst, b []byte) []byte {
	for _, c := range b {
		dst = append(dst, hexDigits[c>>4], hexDigits[c&0x0f])
	}
	return dst
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// IsHexDigit reports whether c is 0-9, a-f or A-F: a legacy stream starts with one.
func IsHexDigit(c byte) bool {
	_, ok := unhex(c)
	return ok
}

func quoteByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return fmt.Sprintf("%q", rune(c))
	}
	return fmt.Sprintf("0x%02x", c)
}
