// Package registry is medpipe's device registry in JetStream KV: the source
// of truth for device keys when running against NATS. Every decrypt worker
// watches it, so a device added, rotated or revoked takes effect on every
// worker without a restart.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
	"github.com/medpipe/medpipe/wire"
)

// Bucket is the KV bucket holding one Record per device, keyed by device id.
// Only the decrypt and admin roles may read it (bus.RolePermissions).
const Bucket = bus.DevicesBucket

// Record is one device in the registry. Key and IV are secrets: Record's
// String hides them, and nothing logs a Record's JSON.
type Record struct {
	ID      string    `json:"id"`
	Key     string    `json:"key"`
	IV      string    `json:"iv"`
	Created time.Time `json:"created"`
	Rotated time.Time `json:"rotated,omitzero"`
	Revoked time.Time `json:"revoked,omitzero"`
}

// String hides the key material.
func (r Record) String() string { return "device " + r.ID }

// Device returns the record as the codecs use it.
func (r Record) Device() wire.Device {
	var d wire.Device
	d.ID = r.ID
	copy(d.Key[:], r.Key)
	copy(d.IV[:], r.IV)
	return d
}

// newSecrets draws a fresh random key and IV.
func (r *Record) newSecrets() error {
	d, err := wire.NewRandomDevice(r.ID)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	r.Key, r.IV = string(d.Key[:]), string(d.IV[:])
	return nil
}

// IsRevoked reports whether the device was revoked.
func (r Record) IsRevoked() bool { return !r.Revoked.IsZero() }

// Errors from the registry.
var (
	ErrNotFound = errors.New("registry: no such device")
	ErrExists   = errors.New("registry: device already exists")
)

// Registry is the device registry bucket.
type Registry struct {
	kv    jetstream.KeyValue
	audit *auditLog
	now   func() time.Time
}

// Open is the admin's way in: it creates the bucket if needed (replicas as
// given, file storage, one version per device so that a rotated key is
// gone), cuts an older bucket's history down to one, and records every key
// operation made through it in the audit stream (bus.StreamAudit).
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Registry, error) {
	if err := bus.ApplyBuckets(ctx, js, replicas, Bucket); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		return nil, fmt.Errorf("registry: open bucket %s: %w", Bucket, err)
	}
	a, err := openAudit(ctx, js, replicas)
	if err != nil {
		return nil, err
	}
	return &Registry{kv: kv, audit: a, now: time.Now}, nil
}

// Bind is decrypt's way in: it reads and watches the bucket (creating it
// with its configuration if it does not exist yet) and writes nothing.
func Bind(ctx context.Context, js jetstream.JetStream, replicas int) (*Registry, error) {
	kv, err := bus.BindBucket(ctx, js, Bucket, replicas)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	return &Registry{kv: kv, now: time.Now}, nil
}

func decode(e jetstream.KeyValueEntry) (Record, error) {
	var r Record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return r, fmt.Errorf("registry: record %s is not valid JSON", e.Key())
	}
	if r.ID != e.Key() || len(r.Key) != 16 || len(r.IV) != 16 {
		return r, fmt.Errorf("registry: record %s is inconsistent", e.Key())
	}
	return r, nil
}

// Get returns one device.
func (g *Registry) Get(ctx context.Context, id string) (Record, uint64, error) {
	if !wire.ValidID(id) {
		return Record{}, 0, fmt.Errorf("registry: invalid device id %q", id)
	}
	e, err := g.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return Record{}, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("registry: get %s: %w", id, err)
	}
	r, err := decode(e)
	return r, e.Revision(), err
}

// List returns every device, sorted by id.
func (g *Registry) List(ctx context.Context) ([]Record, error) {
	keys, err := g.kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("registry: list: %w", err)
	}
	out := make([]Record, 0, len(keys))
	for _, k := range keys {
		r, _, err := g.Get(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	sortRecords(out)
	return out, nil
}

func (g *Registry) put(ctx context.Context, r Record, rev uint64) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if rev == 0 {
		_, err = g.kv.Create(ctx, r.ID, b)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("%w: %s", ErrExists, r.ID)
		}
	} else {
		_, err = g.kv.Update(ctx, r.ID, b, rev) // compare-and-set: concurrent edits fail rather than overwrite
	}
	if err != nil {
		return fmt.Errorf("registry: write %s: %w", r.ID, err)
	}
	return nil
}

// Add registers a new device with a random key and IV.
func (g *Registry) Add(ctx context.Context, id string) (Record, error) {
	if !wire.ValidID(id) {
		return Record{}, fmt.Errorf("registry: invalid device id %q", id)
	}
	r := Record{ID: id, Created: g.now().UTC()}
	if err := r.newSecrets(); err != nil {
		return Record{}, err
	}
	if err := g.put(ctx, r, 0); err != nil {
		return Record{}, err
	}
	return r, g.record(ctx, ActionAdd, r, "")
}

// Rotate gives a device a new random key and IV; a revoked device stays revoked.
func (g *Registry) Rotate(ctx context.Context, id string) (Record, error) {
	r, rev, err := g.Get(ctx, id)
	if err != nil {
		return Record{}, err
	}
	if err := r.newSecrets(); err != nil {
		return Record{}, err
	}
	r.Rotated = g.now().UTC()
	if err := g.put(ctx, r, rev); err != nil {
		return Record{}, err
	}
	return r, g.record(ctx, ActionRotate, r, "")
}

// Revoke marks a device revoked: its frames are dead-lettered from then on.
func (g *Registry) Revoke(ctx context.Context, id string) (Record, error) {
	r, rev, err := g.Get(ctx, id)
	if err != nil {
		return Record{}, err
	}
	if r.IsRevoked() {
		return r, nil
	}
	r.Revoked = g.now().UTC()
	if err := g.put(ctx, r, rev); err != nil {
		return Record{}, err
	}
	return r, g.record(ctx, ActionRevoke, r, "")
}

// ImportReport says what Import did, by device id.
type ImportReport struct {
	Added, Changed, Unchanged []string
	// Revoked are devices the file lists that are revoked in the registry:
	// they stay revoked and keep their record (revoking is undone by no
	// import; re-register a device under a new id instead).
	Revoked []string
}

// Import brings the registry in line with a keys file: new devices are
// added, devices whose key or IV differ are updated (marked rotated), the
// rest are left alone; revoked devices stay revoked and unchanged. Importing
// the same file twice changes nothing.
func (g *Registry) Import(ctx context.Context, devs []wire.Device) (ImportReport, error) {
	var rep ImportReport
	for _, d := range devs {
		key, iv := string(d.Key[:]), string(d.IV[:])
		r, rev, err := g.Get(ctx, d.ID)
		switch {
		case errors.Is(err, ErrNotFound):
			r = Record{ID: d.ID, Key: key, IV: iv, Created: g.now().UTC()}
			if err := g.put(ctx, r, 0); err != nil {
				return rep, err
			}
			if err := g.record(ctx, ActionImport, r, "added"); err != nil {
				return rep, err
			}
			rep.Added = append(rep.Added, d.ID)
		case err != nil:
			return rep, err
		case r.IsRevoked():
			rep.Revoked = append(rep.Revoked, d.ID)
		case r.Key == key && r.IV == iv:
			rep.Unchanged = append(rep.Unchanged, d.ID)
		default:
			r.Key, r.IV, r.Rotated = key, iv, g.now().UTC()
			if err := g.put(ctx, r, rev); err != nil {
				return rep, err
			}
			if err := g.record(ctx, ActionImport, r, "changed"); err != nil {
				return rep, err
			}
			rep.Changed = append(rep.Changed, d.ID)
		}
	}
	return rep, nil
}

// Secrets returns the devices include selects (nil: all) with their keys,
// for an export or a listing that shows secrets. Each device handed out is
// recorded in the audit stream first (action is ActionExport or
// ActionListSecrets): if a record cannot be written, no secret is returned.
func (g *Registry) Secrets(ctx context.Context, action Action, include func(Record) bool) ([]Record, error) {
	recs, err := g.List(ctx)
	if err != nil {
		return nil, err
	}
	out := recs[:0]
	for _, r := range recs {
		if include != nil && !include(r) {
			continue
		}
		if err := g.record(ctx, action, r, ""); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Watch calls fn with every device now in the registry, then ready() once,
// then with every change until ctx is cancelled. deleted is true for a
// device purged from the bucket.
func (g *Registry) Watch(ctx context.Context, fn func(r Record, deleted bool), ready func()) error {
	w, err := g.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("registry: watch: %w", err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil { // the initial values have all been delivered
				if ready != nil {
					ready()
				}
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				fn(Record{ID: e.Key()}, true)
				continue
			}
			r, err := decode(e)
			if err != nil {
				continue // a record another tool broke: keep the last good state
			}
			fn(r, false)
		}
	}
}

func sortRecords(rs []Record) {
	slices.SortFunc(rs, func(a, b Record) int { return strings.Compare(a.ID, b.ID) })
}
