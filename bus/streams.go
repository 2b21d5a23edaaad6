package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults for StreamOptions.
const (
	DefaultRawMaxAge        = 7 * 24 * time.Hour
	DefaultRawMaxBytes      = 8 << 30
	DefaultReadingsMaxAge   = 24 * time.Hour
	DefaultDeadLetterMaxAge = 7 * 24 * time.Hour
	DefaultDuplicateWindow  = 2 * time.Minute
)

// metaPartitions is the stream metadata key recording the partition count,
// so every stage agrees on it without a flag of its own.
const metaPartitions = "medpipe_partitions"

// StreamOptions sets the limits of medpipe's streams. Zero values take the defaults.
type StreamOptions struct {
	// Partitions of RAW and READINGS. Zero adopts the existing streams'
	// count, or DefaultPartitions for new streams; a non-zero value that
	// differs from existing streams is an error.
	Partitions int
	// Replicas of every stream (1; 3 on a JetStream cluster).
	Replicas int
	// RawMaxAge and RawMaxBytes bound RAW, which keeps frames for replay
	// (defaults 7 days, 8 GiB). The oldest frames go first.
	RawMaxAge   time.Duration
	RawMaxBytes int64
	// ReadingsMaxAge bounds READINGS (default 24 h).
	ReadingsMaxAge time.Duration
	// DeadLetterMaxAge bounds DEADLETTER (default 7 days).
	DeadLetterMaxAge time.Duration
	// DuplicateWindow is how long a message id is remembered so that a
	// retried publish is stored once (default 2 min).
	DuplicateWindow time.Duration
	// Compression of every stream's blocks on disk (default none).
	// jetstream.S2Compression stores RAW in 35 % less disk, but the
	// server compresses each full block (up to 8 MB) in one go, holding the
	// block meanwhile: on 2 cores that put p99 latency at 74-87 ms instead
	// of 26-33 ms at 750 readings/s. Archives (zstd) are the cheap way to
	// keep old frames.
	Compression jetstream.StoreCompression
}

func (o *StreamOptions) setDefaults() {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.RawMaxAge <= 0 {
		o.RawMaxAge = DefaultRawMaxAge
	}
	if o.RawMaxBytes == 0 {
		o.RawMaxBytes = DefaultRawMaxBytes
	}
	if o.ReadingsMaxAge <= 0 {
		o.ReadingsMaxAge = DefaultReadingsMaxAge
	}
	if o.DeadLetterMaxAge <= 0 {
		o.DeadLetterMaxAge = DefaultDeadLetterMaxAge
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = DefaultDuplicateWindow
	}
}

// StreamConfigs returns the configurations of RAW, READINGS and DEADLETTER
// for the given options and partition count.
func StreamConfigs(o StreamOptions, partitions int) []jetstream.StreamConfig {
	o.setDefaults()
	meta := map[string]string{metaPartitions: strconv.Itoa(partitions)}
	return []jetstream.StreamConfig{{
		Name:        StreamRaw,
		Description: "medpipe: device frames as received, still encrypted",
		Subjects:    []string{SubjectRawPrefix + "*"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.RawMaxAge,
		MaxBytes:    o.RawMaxBytes,
		Duplicates:  o.DuplicateWindow,
		Compression: o.Compression,
		Replicas:    o.Replicas,
		Metadata:    meta,
	}, {
		Name:        StreamReadings,
		Description: "medpipe: decrypted, validated readings",
		Subjects:    []string{SubjectReadingsPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.ReadingsMaxAge,
		Duplicates:  o.DuplicateWindow,
		Compression: o.Compression,
		Replicas:    o.Replicas,
		Metadata:    meta,
	}, {
		Name:        StreamDeadLetter,
		Description: "medpipe: frames that could not become readings, with a reason",
		Subjects:    []string{SubjectDeadLetterPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.DeadLetterMaxAge,
		Duplicates:  o.DuplicateWindow,
		Compression: o.Compression,
		Replicas:    o.Replicas,
	}}
}

// ErrStreamMismatch is returned when an existing stream contradicts the
// contract (subjects, storage, retention or partition count).
var ErrStreamMismatch = errors.New("bus: existing stream does not match medpipe's contract")

// EnsureStreams creates medpipe's streams, or verifies existing ones and
// brings their limits up to date. It returns the partition count in force.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) (int, error) {
	partitions := o.Partitions
	if partitions == 0 {
		partitions = DefaultPartitions
		if s, err := js.Stream(ctx, StreamRaw); err == nil {
			if n, err := strconv.Atoi(s.CachedInfo().Config.Metadata[metaPartitions]); err == nil && n > 0 {
				partitions = n
			}
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return 0, fmt.Errorf("bus: look up stream %s: %w", StreamRaw, err)
		}
	}
	if partitions < 1 || partitions > 1024 {
		return 0, fmt.Errorf("bus: %d partitions: want 1 to 1024", partitions)
	}
	for _, want := range StreamConfigs(o, partitions) {
		if err := ensureStream(ctx, js, want); err != nil {
			return 0, err
		}
	}
	return partitions, nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) error {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) { // another stage won the race
			s, err = js.Stream(ctx, want.Name)
		} else if err != nil {
			return fmt.Errorf("bus: create stream %s: %w", want.Name, err)
		} else {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("bus: look up stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	switch {
	case !slices.Equal(have.Subjects, want.Subjects):
		return fmt.Errorf("%w: %s has subjects %v, want %v", ErrStreamMismatch, want.Name, have.Subjects, want.Subjects)
	case have.Storage != want.Storage:
		return fmt.Errorf("%w: %s has %s storage, want %s", ErrStreamMismatch, want.Name, have.Storage, want.Storage)
	case have.Retention != want.Retention:
		return fmt.Errorf("%w: %s has %s retention, want %s", ErrStreamMismatch, want.Name, have.Retention, want.Retention)
	case have.Metadata[metaPartitions] != want.Metadata[metaPartitions]:
		return fmt.Errorf("%w: %s has %q partitions, this stage is configured for %q (drop --partitions to adopt the stream's)",
			ErrStreamMismatch, want.Name, have.Metadata[metaPartitions], want.Metadata[metaPartitions])
	}
	if have.MaxAge == want.MaxAge && have.MaxBytes == want.MaxBytes && have.Duplicates == want.Duplicates &&
		have.Replicas == want.Replicas && have.Compression == want.Compression {
		return nil
	}
	upd := have
	upd.MaxAge, upd.MaxBytes, upd.Duplicates, upd.Replicas, upd.Compression = want.MaxAge, want.MaxBytes, want.Duplicates, want.Replicas, want.Compression
	if _, err := js.UpdateStream(ctx, upd); err != nil {
		return fmt.Errorf("bus: update limits of stream %s: %w", want.Name, err)
	}
	return nil
}

// PriorityGroup is the pull priority group every medpipe consumer uses.
const PriorityGroup = "medpipe"

// DefaultPinnedTTL is how long a partition stays pinned to a worker that
// stopped pulling before another worker takes it over.
const DefaultPinnedTTL = 10 * time.Second

// DefaultAckWait is how long a delivered message may go unacknowledged
// before it is redelivered. It is shorter than DefaultPinnedTTL on purpose:
// when a worker dies, its unacknowledged messages are due again before its
// partition moves, so the next worker receives them first and order holds.
// Workers that legitimately wait longer (a broker outage) say so with
// in-progress acks.
const DefaultAckWait = 6 * time.Second

// ConsumerConfig is the durable pull consumer that stage reads partition p
// with: explicit acks, pinned to one worker at a time so that the
// partition's messages are processed in order.
func ConsumerConfig(stage string, p int, filter string, maxAckPending int) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        stage + "-" + strconv.Itoa(p),
		Description:    "medpipe " + stage + " partition " + strconv.Itoa(p),
		FilterSubject:  filter,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        DefaultAckWait,
		MaxDeliver:     -1,
		MaxAckPending:  maxAckPending,
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{PriorityGroup},
		PinnedTTL:      DefaultPinnedTTL,
	}
}

// ConnBucket is the KV bucket that shares, across decrypt workers, which
// device each connection carries, so that a worker taking over a partition
// opens a known connection's frames without a key search.
const ConnBucket = "MEDPIPE_CONNS"

// DefaultConnTTL is how long a connection → device entry lives.
const DefaultConnTTL = 6 * time.Hour

// OpenConnStore creates or binds the connection → device bucket: memory
// storage (it is a cache), entries expiring after DefaultConnTTL.
func OpenConnStore(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      ConnBucket,
		Description: "medpipe: device carried by each connection, shared by decrypt workers",
		TTL:         DefaultConnTTL,
		Storage:     jetstream.MemoryStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("bus: open bucket %s: %w", ConnBucket, err)
	}
	return kv, nil
}

// SeqBucket is the KV bucket holding each v2 device's sequence high-water
// mark, shared by every decrypt worker: a frame at or below it is a replay.
const SeqBucket = "MEDPIPE_SEQ"

// OpenSeqStore creates or binds the high-water mark bucket (file storage:
// replay protection must survive restarts).
func OpenSeqStore(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      SeqBucket,
		Description: "medpipe: v2 devices' sequence high-water marks",
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("bus: open bucket %s: %w", SeqBucket, err)
	}
	return kv, nil
}
