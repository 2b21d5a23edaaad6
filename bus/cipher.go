package bus

import (
	"fmt"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/sys/cpu"
)

// Ciphers a JetStream store can be encrypted with, as nats-server's
// configuration spells them.
const (
	CipherAES    = "aes"
	CipherChaCha = "chachapoly"
)

// HardwareCipher is the store cipher that costs least on this CPU: AES
// where it has AES instructions (AES-NI, ARMv8 AES), ChaCha20 elsewhere,
// where software AES would be the slower of the two. Both are 256-bit.
func HardwareCipher() string {
	if cpu.X86.HasAES || cpu.ARM64.HasAES || cpu.S390X.HasAES {
		return CipherAES
	}
	return CipherChaCha
}

// storeCipher maps a cipher's name, or empty for HardwareCipher, to
// nats-server's.
func storeCipher(name string) (server.StoreCipher, error) {
	if name == "" {
		name = HardwareCipher()
	}
	switch name {
	case CipherAES:
		return server.AES, nil
	case CipherChaCha:
		return server.ChaCha, nil
	}
	return server.NoCipher, fmt.Errorf("bus: unknown store cipher %q (want %q or %q)", name, CipherAES, CipherChaCha)
}
