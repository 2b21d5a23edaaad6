package wire

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
)

// legacyVectors is testdata/legacy.json, produced by an independent
// implementation of the field devices' encoders.
type legacyVectors struct {
	Devices []struct {
		ID  string `json:"id"`
		Key string `json:"key"`
		IV  string `json:"iv"`
	} `json:"devices"`
	Vectors []struct {
		Device    string `json:"device"`
		Variant   string `json:"variant"`
		Plaintext string `json:"plaintext"`
		Wire      string `json:"wire"`
		Blocks    int    `json:"blocks"`
	} `json:"vectors"`
	Stream struct {
		Device  string   `json:"device"`
		Variant string   `json:"variant"`
		Wire    string   `json:"wire"`
		Frames  []string `json:"frames"`
	} `json:"stream"`
	Bad []struct {
		Why  string `json:"why"`
		Wire string `json:"wire"`
	} `json:"bad"`
}

func loadVectors(t testing.TB) (legacyVectors, map[string]*LegacyKey) {
	t.Helper()
	b, err := os.ReadFile("testdata/legacy.json")
	if err != nil {
		t.Fatal(err)
	}
	var v legacyVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	var lines strings.Builder
	for _, d := range v.Devices {
		k, _ := json.Marshal(d)
		lines.Write(k)
		lines.WriteByte('\n')
	}
	devs, err := ReadKeys(strings.NewReader(lines.String()))
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]*LegacyKey{}
	for _, d := range devs {
		keys[d.ID] = NewLegacyKey(d)
	}
	return v, keys
}

func TestLegacyVectorsSeal(t *testing.T) {
	v, keys := loadVectors(t)
	if len(v.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	for i, vec := range v.Vectors {
		variant, err := ParseVariant(vec.Variant)
		if err != nil {
			t.Fatal(err)
		}
		got := string(keys[vec.Device].Seal(nil, variant, []byte(vec.Plaintext)))
		if got != vec.Wire {
			t.Errorf("vector %d (%s %s): Seal\n got %s\nwant %s", i, vec.Device, vec.Variant, got, vec.Wire)
		}
		if n := BlocksInFrame(len(got)); n != vec.Blocks {
			t.Errorf("vector %d: %d blocks, want %d", i, n, vec.Blocks)
		}
	}
}

func TestLegacyVectorsOpen(t *testing.T) {
	v, keys := loadVectors(t)
	for i, vec := range v.Vectors {
		ct, err := DecodeFrame(nil, []byte(vec.Wire))
		if err != nil {
			t.Fatalf("vector %d: %v", i, err)
		}
		want, err := ParseReading([]byte(vec.Plaintext))
		if err != nil {
			t.Fatalf("vector %d plaintext: %v", i, err)
		}
		for _, prefer := range []Variant{Pico, Pseudo} {
			r, variant, err := keys[vec.Device].Open(nil, ct, prefer)
			if err != nil {
				t.Fatalf("vector %d: Open: %v", i, err)
			}
			if variant.String() != vec.Variant {
				t.Errorf("vector %d: detected %s, want %s", i, variant, vec.Variant)
			}
			if r != want {
				t.Errorf("vector %d: reading %v, want %v", i, r, want)
			}
		}
		var first [BlockSize]byte
		keys[vec.Device].FirstBlock(&first, ct)
		if !LooksLikeReading(&first) || string(first[:]) != vec.Plaintext[:BlockSize] {
			t.Errorf("vector %d: first block %q", i, first)
		}
		// Every other key must be told apart by the first block alone.
		for id, k := range keys {
			if id == vec.Device {
				continue
			}
			k.FirstBlock(&first, ct)
			if LooksLikeReading(&first) {
				t.Errorf("vector %d: key of %s fits the first block", i, id)
			}
		}
	}
}

func TestLegacyVectorsStream(t *testing.T) {
	v, keys := loadVectors(t)
	fr := NewFrameReader(strings.NewReader(v.Stream.Wire), FrameReaderOptions{})
	var got []string
	for {
		f, err := fr.Next()
		if errors.Is(err, errEOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(f))
		ct, err := DecodeFrame(nil, f)
		if err != nil {
			t.Fatal(err)
		}
		if _, variant, err := keys[v.Stream.Device].Open(nil, ct, Pico); err != nil || variant.String() != v.Stream.Variant {
			t.Errorf("frame %d: variant %v, err %v", len(got), variant, err)
		}
	}
	if strings.Join(got, "\n") != strings.Join(v.Stream.Frames, "\n") {
		t.Errorf("frames\n got %q\nwant %q", got, v.Stream.Frames)
	}
}

// TestLegacyVectorsBad checks that every bad input is rejected by the stage
// that must reject it: the frame reader, the hex decoder, or every key.
func TestLegacyVectorsBad(t *testing.T) {
	v, keys := loadVectors(t)
	if len(v.Bad) == 0 {
		t.Fatal("no bad vectors")
	}
	for _, bad := range v.Bad {
		t.Run(bad.Why, func(t *testing.T) {
			if err := acceptLegacy(bad.Wire, keys); err == nil {
				t.Fatalf("accepted %q", bad.Wire)
			} else {
				t.Logf("rejected: %v", err)
			}
		})
	}
}

// acceptLegacy runs wire text through the whole legacy receive path and
// returns the first error.
func acceptLegacy(wireText string, keys map[string]*LegacyKey) error {
	fr := NewFrameReader(strings.NewReader(wireText), FrameReaderOptions{})
	n := 0
	for {
		f, err := fr.Next()
		if errors.Is(err, errEOF) {
			if n == 0 {
				return errEOF
			}
			return nil
		}
		if err != nil {
			return err
		}
		n++
		ct, err := DecodeFrame(nil, f)
		if err != nil {
			return err
		}
		var opened bool
		for _, k := range keys {
			if _, _, err := k.Open(nil, ct, Pico); err == nil {
				opened = true
			}
		}
		if !opened {
			return errors.New("no key opens the frame")
		}
	}
}
