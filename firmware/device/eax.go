package device

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"errors"
)

// EAX (Bellare, Rogaway, Wagner 2004) authenticates and encrypts the
// configuration form. It needs only the AES forward cipher (CTR and CMAC),
// which the page's own small AES implementation provides: plain
// http://192.168.4.1 has no WebCrypto.
//
// tag = OMAC⁰(N) ⊕ OMAC¹(H) ⊕ OMAC²(C), C = CTR(OMAC⁰(N), M).

// ErrAuth means the form failed authentication: a wrong provisioning key,
// a replayed challenge or a tampered message.
var ErrAuth = errors.New("device: configuration failed authentication")

const eaxTagSize = 16

// eaxSeal encrypts msg with nonce and header (associated data), appending
// ciphertext and tag.
func eaxSeal(key []byte, nonce, header, msg []byte) []byte {
	b, _ := aes.NewCipher(key)
	n, h := omac(b, 0, nonce), omac(b, 1, header)
	out := make([]byte, len(msg), len(msg)+eaxTagSize)
	cipher.NewCTR(b, n[:]).XORKeyStream(out, msg)
	c := omac(b, 2, out)
	for i := range c {
		c[i] ^= n[i] ^ h[i]
	}
	return append(out, c[:]...)
}

// eaxOpen checks and decrypts what eaxSeal made.
func eaxOpen(key []byte, nonce, header, sealed []byte) ([]byte, error) {
	if len(sealed) < eaxTagSize {
		return nil, ErrAuth
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, ErrAuth
	}
	ct, tag := sealed[:len(sealed)-eaxTagSize], sealed[len(sealed)-eaxTagSize:]
	n, h, c := omac(b, 0, nonce), omac(b, 1, header), omac(b, 2, ct)
	for i := range c {
		c[i] ^= n[i] ^ h[i]
	}
	if subtle.ConstantTimeCompare(c[:], tag) != 1 {
		return nil, ErrAuth
	}
	out := make([]byte, len(ct))
	cipher.NewCTR(b, n[:]).XORKeyStream(out, ct)
	return out, nil
}

// omac is CMAC (NIST SP 800-38B) over the block [0…0 t] ‖ data.
func omac(b cipher.Block, t byte, data []byte) [16]byte {
	var l, k1, k2 [16]byte
	b.Encrypt(l[:], l[:])
	double(&k1, &l)
	double(&k2, &k1)
	var x [16]byte
	x[15] = t
	if len(data) == 0 { // the tweak block alone: complete and last
		for i := range 16 {
			x[i] ^= k1[i]
		}
		b.Encrypt(x[:], x[:])
		return x
	}
	b.Encrypt(x[:], x[:])
	for len(data) > 16 {
		for i := range 16 {
			x[i] ^= data[i]
		}
		b.Encrypt(x[:], x[:])
		data = data[16:]
	}
	// The last block: complete (K1) or padded with 10…0 (K2).
	if len(data) == 16 {
		for i := range 16 {
			x[i] ^= data[i] ^ k1[i]
		}
	} else {
		var last [16]byte
		copy(last[:], data)
		last[len(data)] = 0x80
		for i := range 16 {
			x[i] ^= last[i] ^ k2[i]
		}
	}
	b.Encrypt(x[:], x[:])
	return x
}

// double multiplies by x in GF(2^128), CMAC's subkey step.
func double(dst, src *[16]byte) {
	carry := src[0] >> 7
	for i := range 15 {
		dst[i] = src[i]<<1 | src[i+1]>>7
	}
	dst[15] = src[15]<<1 ^ carry*0x87
}
