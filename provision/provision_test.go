package provision

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

var bench = Factory{Serial: "bed-3", APPassword: "label passphrase", ProvisioningKey: [16]byte([]byte("provisioning-key"))}

func TestBlockRoundTrip(t *testing.T) {
	b, err := bench.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	// As in flash: the rest of the sector is erased.
	sector := append(b, bytes.Repeat([]byte{0xFF}, SectorSize-len(b))...)
	got, err := Parse(sector)
	if err != nil || got != bench {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for i := range b {
		bad := append([]byte(nil), sector...)
		bad[i] ^= 0x04
		if _, err := Parse(bad); err == nil {
			t.Fatalf("a flipped bit at %d was accepted", i)
		}
	}
	if _, err := Parse(bytes.Repeat([]byte{0xFF}, SectorSize)); !errors.Is(err, ErrNoBlock) {
		t.Fatalf("erased sector: %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		f    Factory
	}{
		{"no serial", Factory{APPassword: "12345678", ProvisioningKey: bench.ProvisioningKey}},
		{"serial with a space", Factory{Serial: "bed 3", APPassword: "12345678", ProvisioningKey: bench.ProvisioningKey}},
		{"serial too long", Factory{Serial: strings.Repeat("x", MaxSerial+1), APPassword: "12345678", ProvisioningKey: bench.ProvisioningKey}},
		{"short password", Factory{Serial: "s", APPassword: "1234567", ProvisioningKey: bench.ProvisioningKey}},
		{"zero key", Factory{Serial: "s", APPassword: "12345678"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.f.Append(nil); err == nil {
				t.Fatal("accepted")
			} else if strings.Contains(err.Error(), tt.f.APPassword) && tt.f.APPassword != "" {
				t.Fatalf("error quotes the password: %v", err)
			}
		})
	}
}

// TestUF2 writes the block as the boot ROM will place it, page-aligned at
// the factory sector, and reads it back.
func TestUF2(t *testing.T) {
	b, _ := bench.Append(nil)
	u := AppendUF2(nil, FactoryAddr, b)
	if len(u) != 512 || FactoryAddr%SectorSize != 0 || RegionAddr+RegionSize != FlashBase+FlashSize {
		t.Fatalf("%d bytes of UF2; factory at %#x", len(u), FactoryAddr)
	}
	back, err := ReadUF2(u, FactoryAddr, SectorSize)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Parse(back); err != nil || got != bench {
		t.Fatalf("from UF2: %+v, %v", got, err)
	}
}

func FuzzParse(f *testing.F) {
	b, _ := bench.Append(nil)
	f.Add(b)
	f.Add([]byte("MPF1\x00\x03\x01a\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Parse(b)
		if err != nil {
			return
		}
		again, err := got.Append(nil)
		if err != nil {
			t.Fatalf("a parsed block does not validate: %v", err)
		}
		if back, err := Parse(again); err != nil || back != got {
			t.Fatalf("round trip: %+v, %v", back, err)
		}
	})
}
