package device

import (
	"bytes"
	"encoding/hex"
	"testing"
)

// TestEAXVectors checks the published EAX test vectors (Bellare, Rogaway,
// Wagner, "The EAX Mode of Operation", appendix).
func TestEAXVectors(t *testing.T) {
	tests := []struct{ msg, key, nonce, header, cipher string }{
		{"", "233952DEE4D5ED5F9B9C6D6FF80FF478", "62EC67F9C3A4A407FCB2A8C49031A8B3", "6BFB914FD07EAE6B", "E037830E8389F27B025A2D6527E79D01"},
		{"F7FB", "91945D3F4DCBEE0BF45EF52255F095A4", "BECAF043B0A23D843194BA972C66DEBD", "FA3BFD4806EB53FA", "19DD5C4C9331049D0BDAB0277408F67967E5"},
		{"1A47CB4933", "01F74AD64077F2E704C0F60ADA3DD523", "70C3DB4F0D26368400A10ED05D2BFF5E", "234A3463C1264AC6", "D851D5BAE03A59F238A23E39199DC9266626C40F80"},
		{"8B0A79306C9CE7ED99DAE4F87F8DD61636", "7C77D6E813BED5AC98BAA417477A2E7D", "1A8C98DCD73D38393B2BF1569DEEFC19", "65D2017990D62528", "02083E3979DA014812F59F11D52630DA30137327D10649B0AA6E1C181DB617D7F2"},
	}
	for i, tt := range tests {
		h := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
		got := eaxSeal(h(tt.key), h(tt.nonce), h(tt.header), h(tt.msg))
		if !bytes.Equal(got, h(tt.cipher)) {
			t.Errorf("%d: sealed %X, want %s", i, got, tt.cipher)
		}
		msg, err := eaxOpen(h(tt.key), h(tt.nonce), h(tt.header), h(tt.cipher))
		if err != nil || !bytes.Equal(msg, h(tt.msg)) {
			t.Errorf("%d: opened %X, %v", i, msg, err)
		}
		bad := h(tt.cipher)
		bad[len(bad)-1] ^= 1
		if _, err := eaxOpen(h(tt.key), h(tt.nonce), h(tt.header), bad); err == nil {
			t.Errorf("%d: a flipped tag bit was accepted", i)
		}
	}
}
