package registry

import (
	"bytes"
	"testing"
	"time"
)

func TestFormat(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	recs := []Record{
		{ID: "a", Key: "0011223344556677", IV: "ffeeddccbbaa9988", Created: t0},
		{ID: "bb", Key: "k", IV: "v", Created: t0, Rotated: t0.Add(time.Hour), Revoked: t0.Add(2 * time.Hour)},
	}
	for _, tc := range []struct {
		name  string
		write func(*bytes.Buffer) error
		want  string
	}{
		{"table", func(b *bytes.Buffer) error { return WriteTable(b, recs, false) },
			"ID  CREATED               ROTATED               REVOKED\n" +
				"a   2026-01-02T03:04:05Z  -                     -\n" +
				"bb  2026-01-02T03:04:05Z  2026-01-02T04:04:05Z  2026-01-02T05:04:05Z\n"},
		{"table with secrets", func(b *bytes.Buffer) error { return WriteTable(b, recs[1:], true) },
			"ID  CREATED               ROTATED               REVOKED               KEY  IV\n" +
				"bb  2026-01-02T03:04:05Z  2026-01-02T04:04:05Z  2026-01-02T05:04:05Z  k    v\n"},
		{"audit", func(b *bytes.Buffer) error {
			return WriteAuditTable(b, []AuditEntry{{Seq: 7, Time: t0, User: "admin", Action: ActionAdd, Device: "a", Fingerprint: "f1", Detail: ""}})
		}, "SEQ  TIME                  USER   ACTION  DEVICE  FINGERPRINT  DETAIL\n" +
			"7    2026-01-02T03:04:05Z  admin  add     a       f1           \n"},
		{"import report", func(b *bytes.Buffer) error {
			_, err := ImportReport{Added: []string{"a"}, Unchanged: []string{"x", "y"}, Revoked: []string{"bb"}}.WriteTo(b)
			return err
		}, "added 1, changed 0, unchanged 2, revoked (left revoked) 1\n  added a\n  revoked, not changed bb\n"},
		{"keys", func(b *bytes.Buffer) error { return WriteKeys(b, recs[:1]) },
			`{"id":"a","key":"0011223344556677","iv":"ffeeddccbbaa9988"}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tc.write(&b); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("got\n%q\nwant\n%q", b.String(), tc.want)
			}
		})
	}
}
