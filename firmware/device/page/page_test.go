package page

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"testing"
)

// TestPageIsCurrentAndSmall checks that the embedded gzip is page.html as
// it stands (run go generate after editing the page) and within budget.
func TestPageIsCurrentAndSmall(t *testing.T) {
	zr, err := gzip.NewReader(bytes.NewReader(Gzip))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("page.html")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("page.html.gz is stale: run go generate ./device/page")
	}
	if len(Gzip) > MaxSize {
		t.Fatalf("page is %d bytes gzipped, over the %d budget", len(Gzip), MaxSize)
	}
	t.Logf("page: %d bytes, %d gzipped", len(want), len(Gzip))
}
