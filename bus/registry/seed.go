package registry

import (
	"context"
	"errors"

	"github.com/medpipe/medpipe/wire"
)

// Seed adds the devices the registry does not hold yet and leaves every
// other one as it is: a device rotated or revoked with `medpipe keys` since
// stays rotated or revoked when a process restarts with the same keys file
// (Import, by contrast, makes the registry match the file). It returns the
// ids added; each is recorded in the audit stream like an import.
func (g *Registry) Seed(ctx context.Context, devs []wire.Device) ([]string, error) {
	var added []string
	for _, d := range devs {
		_, _, err := g.Get(ctx, d.ID)
		if err == nil {
			continue
		}
		if !errors.Is(err, ErrNotFound) {
			return added, err
		}
		r := Record{ID: d.ID, Key: string(d.Key[:]), IV: string(d.IV[:]), Created: g.now().UTC()}
		switch err := g.put(ctx, r, 0); {
		case errors.Is(err, ErrExists): // created meanwhile by someone else: theirs stands
		case err != nil:
			return added, err
		default:
			if err := g.record(ctx, ActionImport, r, "seeded"); err != nil {
				return added, err
			}
			added = append(added, d.ID)
		}
	}
	return added, nil
}
