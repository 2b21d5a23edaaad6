package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/medpipe/medpipe/bus"
)

// Action is a key operation recorded in the audit stream.
type Action string

// Key operations.
const (
	ActionAdd         Action = "add"
	ActionImport      Action = "import"
	ActionRotate      Action = "rotate"
	ActionRevoke      Action = "revoke"
	ActionExport      Action = "export"
	ActionListSecrets Action = "list-secrets"
)

// AuditEntry is one key operation on one device. It never holds a key:
// Fingerprint identifies the key and IV in force after the operation
// without revealing them.
type AuditEntry struct {
	Seq         uint64    `json:"-"`
	Time        time.Time `json:"time"`
	User        string    `json:"user"` // the NATS user, as the server names it
	Action      Action    `json:"action"`
	Device      string    `json:"device"`
	Fingerprint string    `json:"fingerprint"`
	Detail      string    `json:"detail,omitempty"`
}

// Fingerprint names a device's key and IV: the first 8 bytes of a
// domain-separated SHA-256, enough to tell keys apart in an audit and
// useless for finding a 128-bit random key.
func Fingerprint(r Record) string {
	h := sha256.New()
	h.Write([]byte("medpipe key fingerprint\x00"))
	h.Write([]byte(r.Key))
	h.Write([]byte(r.IV))
	return "sha256:" + hex.EncodeToString(h.Sum(nil)[:8])
}

type auditLog struct {
	js   jetstream.JetStream
	user string
}

// openAudit makes sure the audit stream exists and learns, from the
// server, the user this connection is authenticated as.
func openAudit(ctx context.Context, js jetstream.JetStream, replicas int) (*auditLog, error) {
	if err := bus.ApplyAudit(ctx, js, replicas); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	return &auditLog{js: js, user: bus.ConnUser(ctx, js.Conn())}, nil
}

// record appends one entry to the audit stream and waits for it to be stored.
func (g *Registry) record(ctx context.Context, a Action, r Record, detail string) error {
	if g.audit == nil {
		return errors.New("registry: opened read-only (Bind): key operations need Open")
	}
	e := AuditEntry{Time: g.now().UTC(), User: g.audit.user, Action: a, Device: r.ID, Fingerprint: Fingerprint(r), Detail: detail}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if _, err := g.audit.js.Publish(ctx, bus.SubjectAuditPrefix+string(a), b); err != nil {
		return fmt.Errorf("registry: audit %s of %s: %w", a, r.ID, err)
	}
	return nil
}

// Audit returns the audit entries with sequence from and up, oldest first,
// at most limit of them (0: all).
func Audit(ctx context.Context, js jetstream.JetStream, from uint64, limit int) ([]AuditEntry, error) {
	s, err := js.Stream(ctx, bus.StreamAudit)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("registry: audit stream: %w", err)
	}
	last := s.CachedInfo().State.LastSeq
	if s.CachedInfo().State.Msgs == 0 || from > last {
		return nil, nil
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if from > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	c, err := js.OrderedConsumer(ctx, bus.StreamAudit, cfg)
	if err != nil {
		return nil, fmt.Errorf("registry: audit stream: %w", err)
	}
	var out []AuditEntry
	for {
		batch, err := c.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("registry: audit stream: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("registry: audit entry: %w", err)
			}
			var e AuditEntry
			if err := json.Unmarshal(m.Data(), &e); err != nil {
				return nil, fmt.Errorf("registry: audit entry %d is not valid JSON", meta.Sequence.Stream)
			}
			e.Seq = meta.Sequence.Stream
			out = append(out, e)
			if meta.Sequence.Stream >= last || (limit > 0 && len(out) >= limit) {
				return out, nil
			}
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("registry: audit stream: %w", err)
		}
		if n == 0 {
			return out, nil // the rest is gone (never, with deletes denied), or slow: show what we have
		}
	}
}
