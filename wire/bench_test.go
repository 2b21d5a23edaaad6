package wire

import "testing"

// BenchmarkOpen compares the per-frame cost of opening a reading with a
// known key: legacy (hex decode, AES-CBC, padding, JSON) against v2
// (header parse, AES-GCM with tag check, JSON).
func BenchmarkOpen(b *testing.B) {
	legacyKey := NewLegacyKey(v2Device)
	v2Key := NewV2Key(v2Device)
	legacyFrame := legacyKey.Seal(nil, Pico, []byte(sample))
	v2Frame, err := v2Key.SealData(nil, v2Device.ID, 1, [12]byte{}, []byte(v2SamplePayload))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("legacy", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(legacyFrame)))
		ct := make([]byte, 0, 256)
		buf := make([]byte, 512)
		for b.Loop() {
			ct, _ = DecodeFrame(ct[:0], legacyFrame)
			if _, _, err := legacyKey.Open(buf, ct, Pico); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("v2", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(v2Frame)))
		buf := make([]byte, 0, 512)
		for b.Loop() {
			f, err := ParseV2(v2Frame)
			if err != nil {
				b.Fatal(err)
			}
			plain, err := v2Key.Open(buf[:0], &f)
			if err != nil {
				b.Fatal(err)
			}
			p, err := ParseV2Payload(plain)
			if err != nil {
				b.Fatal(err)
			}
			_ = p.Values.Reading()
		}
	})
}
