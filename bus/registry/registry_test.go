package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

func openRegistry(t *testing.T) *Registry {
	t.Helper()
	e, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, MQTTPort: -2, HTTPPort: -2, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	nc, js, err := bus.Connect(t.Context(), bus.ConnectOptions{URLs: e.ClientURL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	g, err := Open(t.Context(), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestImportIsIdempotent(t *testing.T) {
	g := openRegistry(t)
	ctx := t.Context()
	devs := []wire.Device{
		{ID: "a", Key: [16]byte([]byte("1234567890123456")), IV: [16]byte([]byte("AAAAAAAAAAAAAAAA"))},
		{ID: "b", Key: [16]byte([]byte("BBBBBBBBBBBBBBBB")), IV: [16]byte([]byte("AAAAAAAAAAAAAAAA"))},
	}
	rep, err := g.Import(ctx, devs)
	if err != nil || len(rep.Added) != 2 || len(rep.Changed)+len(rep.Unchanged) != 0 {
		t.Fatalf("first import %+v %v", rep, err)
	}
	rep, err = g.Import(ctx, devs)
	if err != nil || len(rep.Unchanged) != 2 || len(rep.Added)+len(rep.Changed) != 0 {
		t.Fatalf("second import %+v %v", rep, err)
	}
	devs[1].Key = [16]byte([]byte("CCCCCCCCCCCCCCCC"))
	rep, err = g.Import(ctx, devs)
	if err != nil || fmt.Sprint(rep.Changed) != "[b]" || fmt.Sprint(rep.Unchanged) != "[a]" {
		t.Fatalf("changed import %+v %v", rep, err)
	}
	r, _, err := g.Get(ctx, "b")
	if err != nil || r.Device() != devs[1] || r.Rotated.IsZero() {
		t.Fatalf("b after import: %v %v", r, err)
	}
}

func TestAddRotateRevoke(t *testing.T) {
	g := openRegistry(t)
	ctx := t.Context()
	r, err := g.Add(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Add(ctx, "dev-1"); !errors.Is(err, ErrExists) {
		t.Fatalf("second add: %v", err)
	}
	rot, err := g.Rotate(ctx, "dev-1")
	if err != nil || rot.Key == r.Key || rot.IV == r.IV || rot.Rotated.IsZero() {
		t.Fatalf("rotate: %v", err)
	}
	rev, err := g.Revoke(ctx, "dev-1")
	if err != nil || !rev.IsRevoked() {
		t.Fatalf("revoke: %v", err)
	}
	if _, err := g.Rotate(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rotate unknown: %v", err)
	}
	list, err := g.List(ctx)
	if err != nil || len(list) != 1 || !list[0].IsRevoked() {
		t.Fatalf("list: %v %v", list, err)
	}
	if s := fmt.Sprintf("%v %+v", list[0], list[0]); strings.Contains(s, rot.Key) {
		t.Fatalf("formatting a record leaks its key: %s", s)
	}
}

// TestWatchSeesChangesWithinASecond: the initial state, then a live add,
// rotation and revocation reach a watcher.
func TestWatchSeesChangesWithinASecond(t *testing.T) {
	g := openRegistry(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := g.Add(ctx, "before"); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]Record{}
	ready := make(chan struct{})
	go g.Watch(ctx, func(r Record, _ bool) { mu.Lock(); seen[r.ID] = r; mu.Unlock() }, func() { close(ready) })
	<-ready
	get := func(id string) Record { mu.Lock(); defer mu.Unlock(); return seen[id] }
	if get("before").ID == "" {
		t.Fatal("initial state missing")
	}
	within := func(what string, ok func() bool) {
		deadline := time.Now().Add(time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s not seen within 1s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	added, _ := g.Add(ctx, "after")
	within("add", func() bool { return get("after").Key == added.Key })
	rot, _ := g.Rotate(ctx, "after")
	within("rotate", func() bool { return get("after").Key == rot.Key })
	g.Revoke(ctx, "after")
	within("revoke", func() bool { return get("after").IsRevoked() })
}
