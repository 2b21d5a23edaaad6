package bus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	DefaultDuplicateWindow  = 30 * time.Second
	// DefaultReplicas of streams and buckets: one server (3 on a cluster).
	DefaultReplicas = 1
)

// metaPartitions is the stream metadata key recording the partition count,
// so every stage agrees on it without a flag of its own.
const metaPartitions = "medpipe_partitions"

// StreamOptions sets the limits of medpipe's streams. A zero field is not
// given: a new stream takes the default, an existing one keeps its own.
type StreamOptions struct {
	// Partitions of RAW and READINGS. Zero adopts the existing streams'
	// count, or NewPartitions for new streams; a non-zero value that
	// differs from existing streams is an error.
	Partitions int
	// NewPartitions is the partition count of streams created now when
	// Partitions is zero (default DefaultPartitions); existing streams
	// keep theirs.
	NewPartitions int
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
	// retried publish is stored once (default 30 s). It covers the
	// stages' own retries: the edge's backoff (at most 2 s a try), a RAW
	// message redelivered after DefaultAckWait, a partition taken over
	// after DefaultPinnedTTL. The server keeps every id of the window in
	// memory, and the collector scans them: with JetStream's 2 min default
	// the ids were most of `up`'s heap under load and its p99 latency grew
	// with the window (bench/README.md, sixth round). A publish retried after the
	// window, past a longer outage, may be stored twice: a legacy reading
	// then reaches MQTT twice (at least once), a v2 frame's second copy is
	// answered as accepted before.
	DuplicateWindow time.Duration
	// Compression of every stream's blocks on disk (default none), applied
	// to existing streams only when CompressionSet.
	// jetstream.S2Compression stores RAW in 35 % less disk, but the
	// server compresses each full block (up to 8 MB) in one go, holding the
	// block meanwhile: on 2 cores that put p99 latency at 74-87 ms instead
	// of 26-33 ms at 750 readings/s. Archives (zstd) are the cheap way to
	// keep old frames.
	Compression    jetstream.StoreCompression
	CompressionSet bool
}

func (o *StreamOptions) setDefaults() {
	if o.Replicas <= 0 {
		o.Replicas = DefaultReplicas
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

// ErrNotAdmin wraps the failure of a stage to create what an admin creates
// (a missing stream, consumer or bucket), with the command that does it.
var ErrNotAdmin = errors.New("create it as admin: medpipe streams apply (medpipe up does it at start)")

// partitionsInForce returns o.Partitions, or the existing streams' count,
// or DefaultPartitions for new streams.
func partitionsInForce(ctx context.Context, js jetstream.JetStream, o StreamOptions) (int, error) {
	partitions := o.Partitions
	if partitions == 0 {
		partitions = cmp.Or(o.NewPartitions, DefaultPartitions)
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
	return partitions, nil
}

// ApplyStreams is the admin's action on medpipe's streams: it creates
// missing streams (limits from o, defaults for what o leaves zero), and on
// existing ones applies the limits o sets explicitly (non-zero fields,
// Compression when CompressionSet) and leaves every other limit as the
// stream has it, so that a restart with default flags never shrinks what
// an operator configured. It also creates the stages' durable consumers,
// the KV buckets and the audit stream, so that stages only bind to them.
// It returns the partition count in force.
func ApplyStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) (int, error) {
	partitions, err := partitionsInForce(ctx, js, o)
	if err != nil {
		return 0, err
	}
	for _, want := range StreamConfigs(o, partitions) {
		if err := applyStream(ctx, js, want, o); err != nil {
			return 0, err
		}
	}
	if err := ApplyAudit(ctx, js, o.Replicas); err != nil {
		return 0, err
	}
	for _, c := range StageConsumers(partitions) {
		if err := applyConsumer(ctx, js, c.Stream, c.Config); err != nil {
			return 0, err
		}
	}
	if err := ApplyBuckets(ctx, js, o.Replicas); err != nil {
		return 0, err
	}
	return partitions, nil
}

// VerifyStreams is what a stage does at start: it checks that medpipe's
// streams exist and keep the contract, and returns the partition count in
// force. It never changes an existing stream: every limit o sets that
// differs from the stream's is logged as a warning and the stream's limit
// stays in force. A missing stream is created with o (its first creation),
// which fails on a NATS that gives the stage no such right (ErrNotAdmin).
func VerifyStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions, log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.Default()
	}
	partitions, err := partitionsInForce(ctx, js, o)
	if err != nil {
		return 0, err
	}
	for _, want := range StreamConfigs(o, partitions) {
		s, err := js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			if _, err := js.CreateStream(ctx, want); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return 0, fmt.Errorf("bus: stream %s does not exist and this stage could not create it (%w): %w", want.Name, ErrNotAdmin, err)
			}
			log.Info("created stream", "stream", want.Name, "max_age", want.MaxAge, "max_bytes", want.MaxBytes, "partitions", partitions)
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("bus: look up stream %s: %w", want.Name, err)
		}
		have := s.CachedInfo().Config
		if err := checkContract(have, want); err != nil {
			return 0, err
		}
		for _, d := range limitDiffs(have, want, o) {
			log.Warn("stream limit differs from this stage's flag: the stream's stays in force (change it with medpipe streams apply)",
				"stream", want.Name, "limit", d.name, "stream_value", d.have, "flag_value", d.want)
		}
	}
	return partitions, nil
}

// checkContract reports an existing stream that medpipe cannot work with.
func checkContract(have, want jetstream.StreamConfig) error {
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
	return nil
}

type limitDiff struct {
	name       string
	have, want any
}

// limitDiffs lists the limits o sets explicitly that differ from have.
func limitDiffs(have, want jetstream.StreamConfig, o StreamOptions) []limitDiff {
	var d []limitDiff
	given := givenLimits(want.Name, o)
	if given.maxAge && have.MaxAge != want.MaxAge {
		d = append(d, limitDiff{"max_age", have.MaxAge.String(), want.MaxAge.String()})
	}
	if given.maxBytes && have.MaxBytes != want.MaxBytes {
		d = append(d, limitDiff{"max_bytes", have.MaxBytes, want.MaxBytes})
	}
	if o.DuplicateWindow != 0 && have.Duplicates != want.Duplicates {
		d = append(d, limitDiff{"duplicate_window", have.Duplicates.String(), want.Duplicates.String()})
	}
	if o.Replicas != 0 && have.Replicas != want.Replicas {
		d = append(d, limitDiff{"replicas", have.Replicas, want.Replicas})
	}
	if o.CompressionSet && have.Compression != want.Compression {
		d = append(d, limitDiff{"compression", have.Compression.String(), want.Compression.String()})
	}
	return d
}

type given struct{ maxAge, maxBytes bool }

// givenLimits says which of a stream's age and size limits o sets.
func givenLimits(stream string, o StreamOptions) given {
	switch stream {
	case StreamRaw:
		return given{o.RawMaxAge != 0, o.RawMaxBytes != 0}
	case StreamReadings:
		return given{o.ReadingsMaxAge != 0, false}
	case StreamDeadLetter:
		return given{o.DeadLetterMaxAge != 0, false}
	}
	return given{}
}

func applyStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, o StreamOptions) error {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) { // another process won the race
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
	if err := checkContract(have, want); err != nil {
		return err
	}
	diffs := limitDiffs(have, want, o)
	if len(diffs) == 0 {
		return nil
	}
	upd := have
	g := givenLimits(want.Name, o)
	if g.maxAge {
		upd.MaxAge = want.MaxAge
	}
	if g.maxBytes {
		upd.MaxBytes = want.MaxBytes
	}
	if o.DuplicateWindow != 0 {
		upd.Duplicates = want.Duplicates
	}
	if o.Replicas != 0 {
		upd.Replicas = want.Replicas
	}
	if o.CompressionSet {
		upd.Compression = want.Compression
	}
	if _, err := js.UpdateStream(ctx, upd); err != nil {
		return fmt.Errorf("bus: update limits of stream %s: %w", want.Name, err)
	}
	return nil
}

// AuditConfig is the audit stream: every key operation, kept until an
// admin removes the stream, with deletes and purges refused.
func AuditConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamAudit,
		Description: "medpipe: key operations (who, what, which device, key fingerprint; never a key)",
		Subjects:    []string{SubjectAuditPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		DenyDelete:  true,
		DenyPurge:   true,
		Replicas:    max(replicas, 1),
	}
}

// ApplyAudit creates the audit stream if it is missing.
func ApplyAudit(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := js.Stream(ctx, StreamAudit)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, AuditConfig(replicas))
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("bus: audit stream %s: %w", StreamAudit, err)
	}
	return nil
}

// StageConsumer is a durable consumer a stage binds to.
type StageConsumer struct {
	Stream string
	Config jetstream.ConsumerConfig
}

// Consumer stage names: the durable consumers are <stage>-<partition>.
const (
	StageDecrypt = "decrypt"
	StagePublish = "publish"
)

// DefaultMaxInFlight is a stage's default bound on the messages of one
// partition handled but not yet acknowledged.
const DefaultMaxInFlight = 512

// StageConsumers are the durable consumers of decrypt (RAW) and publish
// (READINGS) for every partition, as an admin creates them.
func StageConsumers(partitions int) []StageConsumer {
	var out []StageConsumer
	for p := range partitions {
		out = append(out,
			StageConsumer{StreamRaw, ConsumerConfig(StageDecrypt, p, RawSubject(p), 4*DefaultMaxInFlight)},
			StageConsumer{StreamReadings, ConsumerConfig(StagePublish, p, ReadingsPartitionFilter(p), 4*DefaultMaxInFlight)})
	}
	return out
}

// applyConsumer creates a missing consumer, or brings an existing one to
// the contract while keeping its MaxAckPending (which a stage may have
// raised with its in-flight flag) and its ack policy (which JetStream does
// not let a consumer change; both work, see ConsumerConfig).
func applyConsumer(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig) error {
	c, err := js.Consumer(ctx, stream, cfg.Durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		_, err = js.CreateOrUpdateConsumer(ctx, stream, cfg)
	case err == nil:
		have := c.CachedInfo().Config
		cfg.MaxAckPending = have.MaxAckPending
		cfg.AckPolicy = have.AckPolicy
		if have.FilterSubject != cfg.FilterSubject || have.AckWait != cfg.AckWait || have.PinnedTTL != cfg.PinnedTTL || have.MaxDeliver != cfg.MaxDeliver {
			_, err = js.CreateOrUpdateConsumer(ctx, stream, cfg)
		}
	}
	if err != nil {
		return fmt.Errorf("bus: consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	return nil
}

// BucketConfigs are medpipe's KV buckets as an admin creates them.
func BucketConfigs(replicas int) []jetstream.KeyValueConfig {
	r := max(replicas, 1)
	return []jetstream.KeyValueConfig{
		{
			Bucket:      ConnBucket,
			Description: "medpipe: device carried by each connection, shared by decrypt workers",
			TTL:         DefaultConnTTL,
			Storage:     jetstream.MemoryStorage, // a cache
			Replicas:    r,
		},
		{
			Bucket:      SeqBucket,
			Description: "medpipe: v2 devices' sequence high-water marks",
			Storage:     jetstream.FileStorage, // replay protection must survive restarts
			Replicas:    r,
		},
		DevicesConfig(replicas),
		{
			Bucket: ImportBucket, Description: "medpipe: frames imported from archives, by origin stream",
			Storage: jetstream.FileStorage, Replicas: r,
		},
	}
}

// DevicesConfig is the device registry's bucket. History 1: a rotated or
// re-imported key is gone from the bucket, not kept readable as history.
func DevicesConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      DevicesBucket,
		Description: "medpipe device registry: ids, keys, rotation and revocation",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// ApplyBuckets creates the named buckets (every one of medpipe's when none
// is named) where missing; see applyBucket.
func ApplyBuckets(ctx context.Context, js jetstream.JetStream, replicas int, names ...string) error {
	for _, cfg := range BucketConfigs(replicas) {
		if len(names) > 0 && !slices.Contains(names, cfg.Bucket) {
			continue
		}
		if err := applyBucket(ctx, js, cfg); err != nil {
			return err
		}
	}
	return nil
}

// applyBucket creates a missing bucket; an existing registry keeping more
// than one version of a key is cut down to one (the old secrets go).
func applyBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) error {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		_, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			err = nil
		}
	case err == nil && cfg.Bucket == DevicesBucket:
		st, serr := kv.Status(ctx)
		if serr != nil {
			err = serr
		} else if st.History() != int64(cfg.History) {
			_, err = js.UpdateKeyValue(ctx, cfg)
		}
	}
	if err != nil {
		return fmt.Errorf("bus: bucket %s: %w", cfg.Bucket, err)
	}
	return nil
}

// BindBucket returns bucket, creating it with its configuration when it is
// missing (its first creation; a stage without that right gets ErrNotAdmin).
func BindBucket(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("bus: bucket %s: %w", bucket, err)
	}
	for _, cfg := range BucketConfigs(replicas) {
		if cfg.Bucket != bucket {
			continue
		}
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, bucket)
		}
		if err != nil {
			return nil, fmt.Errorf("bus: bucket %s does not exist and could not be created (%w): %w", bucket, ErrNotAdmin, err)
		}
		return kv, nil
	}
	return nil, fmt.Errorf("bus: unknown bucket %s", bucket)
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
// with, pinned to one worker at a time so that the partition's messages are
// processed in order. Its acks are AckAll: the worker acknowledges in
// partition order anyway, so one ack covers every message before it, and
// a saturated partition sends one ack per batch instead of one per message
// (ConsumePartitions; a consumer created with explicit acks before keeps
// them, and is acknowledged one message at a time).
func ConsumerConfig(stage string, p int, filter string, maxAckPending int) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        stage + "-" + strconv.Itoa(p),
		Description:    "medpipe " + stage + " partition " + strconv.Itoa(p),
		FilterSubject:  filter,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckAllPolicy,
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

// OpenConnStore binds the connection → device bucket (memory storage: it
// is a cache; entries expire after DefaultConnTTL), creating it if missing.
func OpenConnStore(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	return BindBucket(ctx, js, ConnBucket, replicas)
}

// SeqBucket is the KV bucket holding each v2 device's sequence high-water
// mark, shared by every decrypt worker: a frame at or below it is a replay.
const SeqBucket = "MEDPIPE_SEQ"

// OpenSeqStore binds the high-water mark bucket (file storage: replay
// protection must survive restarts), creating it if missing.
func OpenSeqStore(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	return BindBucket(ctx, js, SeqBucket, replicas)
}
