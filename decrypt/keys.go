package decrypt

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/medpipe/medpipe/bus/registry"
	"github.com/medpipe/medpipe/wire"
)

// ReadKeysFile loads a JSON-lines keys file, warning on log when others
// may read it (it holds every device's key).
func ReadKeysFile(path string, log *slog.Logger) ([]wire.Device, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--keys: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Mode().Perm()&0o077 != 0 {
		log.Warn("keys file is readable by group or others; chmod 600 it", "file", path, "mode", st.Mode().Perm().String())
	}
	devs, err := wire.ReadKeys(f)
	if err != nil {
		return nil, fmt.Errorf("--keys %s: %w", path, err)
	}
	return devs, nil
}

// Apply brings one registry change into the index. Revoked devices stay
// indexed so that their frames are refused as revoked, not unknown.
func (ix *KeyIndex) Apply(r registry.Record, deleted bool) {
	if deleted {
		ix.Delete(r.ID)
		return
	}
	ix.Put(r.Device(), r.IsRevoked())
}

// LoadKeyIndex indexes the registry as it is now (for one-off readers such
// as replay; a Worker with Options.Registry follows it live instead).
func LoadKeyIndex(ctx context.Context, reg *registry.Registry) (*KeyIndex, error) {
	recs, err := reg.List(ctx)
	if err != nil {
		return nil, err
	}
	ix := NewKeyIndex(nil)
	for _, r := range recs {
		ix.Apply(r, false)
	}
	return ix, nil
}
