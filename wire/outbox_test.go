package wire

import (
	"bytes"
	"testing"
)

func TestOutbox(t *testing.T) {
	tests := []struct {
		name                string
		maxFrames, maxBytes int
		add                 []int // frame sizes, seq 1, 2, …
		ack                 uint64
		wantSeqs            []byte // first byte of each kept frame (its seq)
		wantDropped         uint64
	}{
		{"keeps all", 4, 0, []int{10, 10, 10}, 0, []byte{1, 2, 3}, 0},
		{"ack drops up to seq", 4, 0, []int{10, 10, 10}, 2, []byte{3}, 0},
		{"ack beyond all", 4, 0, []int{10, 10}, 9, nil, 0},
		{"frame bound drops oldest", 2, 0, []int{10, 10, 10}, 0, []byte{2, 3}, 1},
		{"byte bound drops oldest", 10, 25, []int{10, 10, 10}, 0, []byte{2, 3}, 1},
		{"a frame larger than the byte bound is still kept", 10, 5, []int{10, 10}, 0, []byte{2}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := NewOutbox(tt.maxFrames, tt.maxBytes)
			for i, n := range tt.add {
				f := bytes.Repeat([]byte{byte(i + 1)}, n)
				o.Add(uint64(i+1), f)
			}
			o.Ack(tt.ack)
			var got []byte
			total := 0
			for _, f := range o.Frames() {
				got = append(got, f[0])
				total += len(f)
			}
			if !bytes.Equal(got, tt.wantSeqs) || o.Dropped() != tt.wantDropped || o.Len() != len(tt.wantSeqs) || o.Bytes() != total {
				t.Fatalf("kept %v (len %d, %d bytes), dropped %d; want %v, dropped %d", got, o.Len(), o.Bytes(), o.Dropped(), tt.wantSeqs, tt.wantDropped)
			}
		})
	}
}
