package bus

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Role is a NATS user medpipe's processes connect as. Each role may use
// exactly the subjects and JetStream API calls its work needs (see
// RolePermissions); nothing is granted to anonymous clients.
type Role string

// Roles.
const (
	RoleIngest  Role = "ingest"  // the TCP edge: publishes RAW
	RoleDecrypt Role = "decrypt" // RAW → READINGS/DEADLETTER, reads the registry
	RolePublish Role = "publish" // READINGS → MQTT: the only writer of the device topics
	RoleReplay  Role = "replay"  // reads RAW, imports archives, writes MQTT under the replay prefix
	RoleAdmin   Role = "admin"   // streams, consumers, buckets, the registry and its audit
	// RoleDashboard is an MQTT reader of the device and replay topics.
	RoleDashboard Role = "dashboard"
)

// Roles lists every role, in the order configurations show them.
var Roles = []Role{RoleIngest, RoleDecrypt, RolePublish, RoleReplay, RoleAdmin, RoleDashboard}

// Bucket and stream names of the KV buckets and the audit stream, here so
// that every role's permissions can name them.
const (
	DevicesBucket = "MEDPIPE_DEVICES" // the device registry (keys): decrypt and admin only
	ImportBucket  = "MEDPIPE_IMPORTS" // frames imported from archives, by origin
	StreamAudit   = "MEDPIPE_AUDIT"   // every key operation, append-only
	// SubjectAuditPrefix + action is where key operations are recorded.
	SubjectAuditPrefix = "medpipe.audit."
)

// DefaultTopicPrefix is the first level of the live MQTT topics (Pico/<id>/…).
const DefaultTopicPrefix = "Pico"

// DefaultReplayTopicPrefix is the first level of replayed readings' topics.
const DefaultReplayTopicPrefix = "replay"

// InboxPrefix is the reply-subject prefix a role's connections use. Each
// role subscribes to its own inboxes only, so one role cannot read the
// answers another receives (decrypt's registry reads, say).
func InboxPrefix(r Role) string { return "_INBOX_" + string(r) }

// Permissions are the subjects a role may publish to and subscribe to, and
// the kinds of connection it may make (nats-server's connection types).
type Permissions struct {
	Publish     []string
	Subscribe   []string
	Connections []string
}

// Connection types (nats-server's allowed_connection_types).
const (
	connNATS      = "STANDARD"
	connInProcess = "IN_PROCESS" // medpipe up's stages
	connMQTT      = "MQTT"
)

// TopicSubjects maps an MQTT topic filter to the NATS subject nats-server
// uses for it: levels become tokens, '+' becomes '*' and '#' becomes '>'.
func TopicSubjects(topic string) string {
	r := strings.NewReplacer("/", ".", "+", "*", "#", ">")
	return r.Replace(topic)
}

// RolePermissions returns what role may do. livePrefix is the first level of
// the live MQTT topics (DefaultTopicPrefix unless publish runs with
// --prefix); it is granted to the publish role alone.
func RolePermissions(role Role, livePrefix string) (Permissions, error) {
	if livePrefix == "" {
		livePrefix = DefaultTopicPrefix
	}
	live := TopicSubjects(livePrefix) + ".>"
	replayTopics := DefaultReplayTopicPrefix + ".>"
	api := func(s ...string) []string {
		out := make([]string, len(s))
		for i, v := range s {
			out[i] = "$JS.API." + v
		}
		return out
	}
	// verify reads the configuration of medpipe's streams (never data).
	verify := api("STREAM.INFO."+StreamRaw, "STREAM.INFO."+StreamReadings, "STREAM.INFO."+StreamDeadLetter)
	// consume binds and pulls the pre-created durable consumers of a stream.
	consume := func(stream string) []string {
		return append(api("CONSUMER.INFO."+stream+".*", "CONSUMER.MSG.NEXT."+stream+".*", "CONSUMER.UNPIN."+stream+".*"),
			"$JS.ACK."+stream+".>")
	}
	// kvRead reads keys of a bucket; kvWrite also writes them.
	kvRead := func(bucket string) []string {
		s := "KV_" + bucket
		return api("STREAM.INFO."+s, "DIRECT.GET."+s, "DIRECT.GET."+s+".>", "STREAM.MSG.GET."+s)
	}
	kvWrite := func(bucket string) []string { return append(kvRead(bucket), "$KV."+bucket+".>") }
	// kvWatch follows a bucket with an ordered consumer.
	kvWatch := func(bucket string) []string {
		s := "KV_" + bucket
		return append(api("CONSUMER.CREATE."+s+".>", "CONSUMER.INFO."+s+".*", "CONSUMER.DELETE."+s+".*"), "$JS.FC."+s+".>")
	}
	inbox := InboxPrefix(role) + ".>"
	// v2 replies (ACK, REFUSED) go from decrypt to the edge that received
	// the frame on core NATS, one subject per edge instance: medpipe.ack.<edge>.
	const replies = SubjectAckPrefix + "*"
	p := Permissions{Connections: []string{connNATS, connInProcess}}
	switch role {
	case RoleIngest:
		p.Publish = slices.Concat(verify, []string{SubjectRawPrefix + "*"})
		p.Subscribe = []string{inbox, SubjectDeadLetterPrefix + ">", replies}
	case RoleDecrypt:
		// v2: replies to the edges (AckSubject), mark checkpoints and pins
		// in the mark bucket, which it also watches for pins and resets;
		// a worker taking over a partition reads the READINGS stored since
		// its checkpoint (single message gets, no consumer).
		p.Publish = slices.Concat(verify, consume(StreamRaw), api("STREAM.MSG.GET."+StreamReadings),
			[]string{SubjectReadingsPrefix + ">", SubjectDeadLetterPrefix + ">", replies},
			kvWrite(ConnBucket), kvWrite(SeqBucket), kvWatch(SeqBucket), kvRead(DevicesBucket), kvWatch(DevicesBucket))
		p.Subscribe = []string{inbox}
	case RolePublish:
		p.Publish = slices.Concat(verify, consume(StreamReadings), []string{live})
		p.Subscribe = []string{inbox}
		p.Connections = append(p.Connections, connMQTT) // the bridge to MQTT dashboards
	case RoleReplay:
		// An ordered consumer of its own on RAW (no acks), archive import
		// under its subject with its ledger, MQTT under the replay prefix.
		p.Publish = slices.Concat(verify,
			api("CONSUMER.CREATE."+StreamRaw+".>", "CONSUMER.INFO."+StreamRaw+".*", "CONSUMER.MSG.NEXT."+StreamRaw+".*", "CONSUMER.DELETE."+StreamRaw+".*"),
			[]string{SubjectRawPrefix + "imported", replayTopics}, kvWrite(ImportBucket))
		p.Subscribe = []string{inbox}
	case RoleAdmin:
		p.Publish = []string{">"}
		p.Subscribe = []string{">"}
	case RoleDashboard:
		// MQTT only. A QoS 1 subscription is delivered through an
		// internal subject under $MQTT.sub. that the user must be allowed
		// to subscribe to; MQTT clients cannot name it themselves, and
		// over NATS a dashboard cannot connect at all.
		// An MQTT filter Pico/# is the subjects Pico and Pico.>.
		p.Subscribe = []string{TopicSubjects(livePrefix), live, DefaultReplayTopicPrefix, replayTopics, "$MQTT.sub.>"}
		p.Connections = []string{connMQTT}
	default:
		return p, fmt.Errorf("bus: unknown role %q", role)
	}
	return p, nil
}

// Where medpipe up keeps its secrets in its data directory.
const (
	CredentialsDir   = "credentials"   // <role>.password for every role (0700, files 0600)
	JetStreamKeyFile = "jetstream.key" // the embedded server's encryption-at-rest key (0600)
)

// Credentials are the passwords of every role.
type Credentials map[Role]string

// passwordFile is where a role's password is kept in a credentials directory.
func passwordFile(dir string, r Role) string { return filepath.Join(dir, string(r)+".password") }

// LoadOrCreateCredentials reads the roles' passwords from dir, generating
// any that are missing (256 random bits each). The directory is created
// mode 0700 and each file 0600; a directory or file others can read is
// tightened, since these passwords open patient data.
func LoadOrCreateCredentials(dir string) (Credentials, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bus: credentials: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bus: credentials: %w", err)
	}
	c := Credentials{}
	for _, r := range Roles {
		pw, err := LoadOrCreateSecret(passwordFile(dir, r))
		if err != nil {
			return nil, err
		}
		c[r] = pw
	}
	return c, nil
}

// ReadCredential reads role's password from a credentials directory made by
// LoadOrCreateCredentials. It returns os.ErrNotExist (wrapped) when the
// directory holds none.
func ReadCredential(dir string, r Role) (string, error) {
	b, err := os.ReadFile(passwordFile(dir, r))
	if err != nil {
		return "", fmt.Errorf("bus: credential of %s: %w", r, err)
	}
	pw := strings.TrimSpace(string(b))
	if pw == "" {
		return "", fmt.Errorf("bus: credential of %s in %s is empty", r, dir)
	}
	return pw, nil
}

// NewSecret returns 256 random bits as text: "mp" and base64url. The
// leading letters matter: nats-server parses a variable's value from the
// environment as configuration, and one starting with a digit or '-' is
// taken for a number.
func NewSecret() (string, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("bus: random secret: %w", err)
	}
	return "mp" + base64.RawURLEncoding.EncodeToString(raw), nil
}

// LoadOrCreateSecret reads a secret (one line) from path, or writes a new
// random one (256 bits, base64url) there with mode 0600. An existing file
// readable by others is made 0600.
func LoadOrCreateSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if s == "" {
			return "", fmt.Errorf("bus: secret file %s is empty", path)
		}
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(path, 0o600); err != nil {
				return "", fmt.Errorf("bus: secret file: %w", err)
			}
		}
		return s, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("bus: secret file: %w", err)
	}
	s, err := NewSecret()
	if err != nil {
		return "", err
	}
	// O_EXCL: two processes starting at once must not each write their own.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return LoadOrCreateSecret(path)
	}
	if err != nil {
		return "", fmt.Errorf("bus: secret file: %w", err)
	}
	if _, err := f.WriteString(s + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("bus: secret file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("bus: secret file %s: %w", path, err)
	}
	return s, nil
}

// serverUsers turns credentials into nats-server users with their roles'
// permissions.
func serverUsers(c Credentials, livePrefix string) ([]*server.User, error) {
	var users []*server.User
	for _, r := range Roles {
		pw, ok := c[r]
		if !ok {
			continue
		}
		p, err := RolePermissions(r, livePrefix)
		if err != nil {
			return nil, err
		}
		perms := &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: p.Publish},
			Subscribe: &server.SubjectPermission{Allow: p.Subscribe},
		}
		if len(p.Publish) == 0 { // an empty allow list would allow everything
			perms.Publish = &server.SubjectPermission{Deny: []string{">"}}
		}
		u := &server.User{Username: string(r), Password: pw, Permissions: perms, AllowedConnectionTypes: map[string]struct{}{}}
		for _, ct := range p.Connections {
			u.AllowedConnectionTypes[ct] = struct{}{}
		}
		users = append(users, u)
	}
	return users, nil
}

// RolePasswordEnv is the environment variable the shipped nats-server
// configuration reads a role's password from.
func RolePasswordEnv(r Role) string {
	return "MEDPIPE_NATS_" + strings.ToUpper(string(r)) + "_PASSWORD"
}

// JetStreamKeyEnv is the environment variable the shipped nats-server
// configuration reads the encryption-at-rest key from.
const JetStreamKeyEnv = "MEDPIPE_JETSTREAM_KEY"

// AuthConfig renders the users and permissions of every role as a
// nats-server configuration block, passwords read from RolePasswordEnv(role).
// deploy/nats/auth.conf is this text; a test keeps the two equal.
func AuthConfig(livePrefix string) (string, error) {
	var b strings.Builder
	b.WriteString("# medpipe's NATS users, one per role, with exactly what each role needs.\n")
	b.WriteString("# Generated from bus.RolePermissions: change it there and run\n")
	b.WriteString("#   go test ./bus -run TestShippedAuthConfig -update\n")
	b.WriteString("# Passwords come from the environment (one variable per role); no user\n")
	b.WriteString("# means no access: anonymous clients are refused.\n")
	b.WriteString("authorization {\n  users = [\n")
	list := func(subjects []string) string {
		q := make([]string, len(subjects))
		for i, s := range subjects {
			q[i] = `"` + s + `"`
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	for _, r := range Roles {
		p, err := RolePermissions(r, livePrefix)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "    {\n      user: %s\n      password: $%s\n      permissions: {\n", r, RolePasswordEnv(r))
		if len(p.Publish) > 0 {
			fmt.Fprintf(&b, "        publish: { allow: %s }\n", list(p.Publish))
		} else {
			b.WriteString("        publish: { deny: [\">\"] }\n")
		}
		fmt.Fprintf(&b, "        subscribe: { allow: %s }\n", list(p.Subscribe))
		b.WriteString("      }\n")
		fmt.Fprintf(&b, "      allowed_connection_types: %s\n    }\n", list(p.Connections))
	}
	b.WriteString("  ]\n}\n")
	return b.String(), nil
}

// ConnUser asks the server which user a connection is authenticated as
// ($SYS.REQ.USER.INFO), for audit records that name who acted. It returns
// "unknown" when the server does not say (no system account, no auth).
func ConnUser(ctx context.Context, nc *nats.Conn) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, "$SYS.REQ.USER.INFO", nil)
	if err != nil {
		return "unknown"
	}
	var resp struct {
		Data struct {
			User    string `json:"user"`
			Account string `json:"account"`
		} `json:"data"`
	}
	if json.Unmarshal(m.Data, &resp) != nil || resp.Data.User == "" {
		return "unknown"
	}
	return resp.Data.User
}

// UserOptions are the nats.go options of a connection as user: the
// password and, for medpipe's roles, the role's own inbox prefix (the only
// inboxes the shipped permissions let it subscribe to).
func UserOptions(user, password string) []nats.Option {
	opts := []nats.Option{nats.UserInfo(user, password)}
	if slices.Contains(Roles, Role(user)) {
		opts = append(opts, nats.CustomInboxPrefix(InboxPrefix(Role(user))))
	}
	return opts
}
