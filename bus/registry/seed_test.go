package registry

import (
	"fmt"
	"testing"

	"github.com/medpipe/medpipe/wire"
)

// TestSeedKeepsOperatorChanges: seeding from a keys file adds what is
// missing and never undoes a rotation or a revocation made since.
func TestSeedKeepsOperatorChanges(t *testing.T) {
	g := openRegistry(t)
	ctx := t.Context()
	devs := []wire.Device{
		{ID: "a", Key: [16]byte([]byte("1234567890123456")), IV: [16]byte([]byte("AAAAAAAAAAAAAAAA"))},
		{ID: "b", Key: [16]byte([]byte("BBBBBBBBBBBBBBBB")), IV: [16]byte([]byte("AAAAAAAAAAAAAAAA"))},
	}
	added, err := g.Seed(ctx, devs)
	if err != nil || fmt.Sprint(added) != "[a b]" {
		t.Fatalf("first seed: %v %v", added, err)
	}
	rotated, err := g.Rotate(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Revoke(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	devs = append(devs, wire.Device{ID: "c", Key: [16]byte([]byte("CCCCCCCCCCCCCCCC")), IV: [16]byte([]byte("AAAAAAAAAAAAAAAA"))})
	added, err = g.Seed(ctx, devs)
	if err != nil || fmt.Sprint(added) != "[c]" {
		t.Fatalf("second seed: %v %v", added, err)
	}
	for _, tt := range []struct {
		id      string
		key     string
		revoked bool
	}{{"a", rotated.Key, false}, {"b", "BBBBBBBBBBBBBBBB", true}, {"c", "CCCCCCCCCCCCCCCC", false}} {
		r, _, err := g.Get(ctx, tt.id)
		if err != nil || r.Key != tt.key || r.IsRevoked() != tt.revoked {
			t.Errorf("%s after seeding again: key changed %v, revoked %v (want %v), err %v", tt.id, r.Key != tt.key, r.IsRevoked(), tt.revoked, err)
		}
	}
}
