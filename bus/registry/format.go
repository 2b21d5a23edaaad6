package registry

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/medpipe/medpipe/wire"
)

// The text `medpipe keys` prints: the registry's records, audit entries and
// import reports for an operator, and keys lines for files.

// WriteTo writes the report: the counts, then each device added, changed or
// left revoked, one a line.
func (rep ImportReport) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	fmt.Fprintf(cw, "added %d, changed %d, unchanged %d, revoked (left revoked) %d\n", len(rep.Added), len(rep.Changed), len(rep.Unchanged), len(rep.Revoked))
	for _, l := range []struct {
		what string
		ids  []string
	}{{"added", rep.Added}, {"changed", rep.Changed}, {"revoked, not changed", rep.Revoked}} {
		for _, id := range l.ids {
			fmt.Fprintf(cw, "  %s %s\n", l.what, id)
		}
	}
	return cw.n, cw.err
}

// WriteTable writes records as a table of ids and times; withSecrets adds
// each key and IV.
func WriteTable(w io.Writer, recs []Record, withSecrets bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "ID\tCREATED\tROTATED\tREVOKED"
	if withSecrets {
		head += "\tKEY\tIV"
	}
	fmt.Fprintln(tw, head)
	for _, r := range recs {
		row := fmt.Sprintf("%s\t%s\t%s\t%s", r.ID, stamp(r.Created), stamp(r.Rotated), stamp(r.Revoked))
		if withSecrets {
			row += "\t" + r.Key + "\t" + r.IV
		}
		fmt.Fprintln(tw, row)
	}
	return tw.Flush()
}

// WriteAuditTable writes audit entries as a table.
func WriteAuditTable(w io.Writer, entries []AuditEntry) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tUSER\tACTION\tDEVICE\tFINGERPRINT\tDETAIL")
	for _, e := range entries {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, stamp(e.Time), e.User, e.Action, e.Device, e.Fingerprint, e.Detail)
	}
	return tw.Flush()
}

// WriteKeys writes records as a JSON-lines keys file (wire.AppendKeyLine).
func WriteKeys(w io.Writer, recs []Record) error {
	var b []byte
	for _, r := range recs {
		b = wire.AppendKeyLine(b, r.Device())
	}
	_, err := w.Write(b)
	return err
}

// stamp is a time for a table: RFC 3339, or "-" when unset.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// countWriter counts what it writes and keeps the first error.
type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}
