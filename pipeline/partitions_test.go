package pipeline

import (
	"testing"

	"github.com/medpipe/medpipe/bus"
)

// TestPartitionsFor: two partitions a core, at least minUpPartitions and
// at most bus.DefaultPartitions.
func TestPartitionsFor(t *testing.T) {
	for _, tc := range []struct{ cores, want int }{
		{1, minUpPartitions}, {2, 4}, {3, 6}, {4, 8}, {8, bus.DefaultPartitions}, {64, bus.DefaultPartitions},
	} {
		if got := PartitionsFor(tc.cores); got != tc.want {
			t.Errorf("PartitionsFor(%d) = %d, want %d", tc.cores, got, tc.want)
		}
	}
}
