package wire

import (
	"bytes"
	"testing"
)

func TestOutboxBounds(t *testing.T) {
	tests := []struct {
		name                string
		maxFrames, maxBytes int
		add                 []int  // frame sizes, seq 1, 2, …
		wantSeqs            []byte // first byte of each kept frame (its seq)
		wantDropped         uint64
	}{
		{"keeps all", 4, 0, []int{10, 10, 10}, []byte{1, 2, 3}, 0},
		{"frame bound drops oldest", 2, 0, []int{10, 10, 10}, []byte{2, 3}, 1},
		{"byte bound drops oldest", 10, 25, []int{10, 10, 10}, []byte{2, 3}, 1},
		{"a frame larger than the byte bound is still kept", 10, 5, []int{10, 10}, []byte{2}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := NewOutbox(tt.maxFrames, tt.maxBytes)
			for i, n := range tt.add {
				f := bytes.Repeat([]byte{byte(i + 1)}, n)
				o.Add(uint64(i+1), f)
			}
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

// TestOutboxSettle: only a verified reply for a buffered frame drops it,
// in any order; forged, misdirected and repeated replies change nothing.
func TestOutboxSettle(t *testing.T) {
	k := NewV2Key(v2Device)
	other := NewV2Key(Device{ID: v2Device.ID, Key: [16]byte([]byte("0000000000000000")), IV: v2Device.IV})
	o := NewOutbox(10, 0)
	tags := map[uint64][]byte{}
	for seq := uint64(1); seq <= 4; seq++ {
		f, _ := k.SealData(nil, seq, v2SamplePayload)
		pf, _ := ParseV2(f)
		tags[seq] = pf.Tag()
		o.Add(seq, f)
	}
	reply := func(b []byte) *V2Frame {
		f, err := ParseV2(b)
		if err != nil {
			t.Fatal(err)
		}
		return &f
	}
	steps := []struct {
		name  string
		reply []byte
		want  Settlement
		left  int
	}{
		{"forged ACK for the last seq", other.AppendAck(nil, 4, tags[4]), Unverified, 4},
		{"ACK with another frame's tag", k.AppendAck(nil, 2, tags[1]), Unverified, 4},
		{"ACK of seq 3 first", k.AppendAck(nil, 3, tags[3]), Acked, 3},
		{"same ACK again", k.AppendAck(nil, 3, tags[3]), Unverified, 3},
		{"tampered: resend it", k.AppendRefused(nil, 1, V2RefTampered, tags[1]), Resend, 3},
		{"revoked: halt, keep it", k.AppendRefused(nil, 1, V2RefRevoked, tags[1]), Halt, 3},
		{"downgrade: halt, keep it", k.AppendRefused(nil, 1, V2RefDowngrade, tags[1]), Halt, 3},
		{"a code this device does not know: halt, keep it", k.AppendRefused(nil, 1, 99, tags[1]), Halt, 3},
		{"tampered again: drop it", k.AppendRefused(nil, 1, V2RefTampered, tags[1]), Dropped, 2},
		{"invalid: drop it", k.AppendRefused(nil, 4, V2RefInvalid, tags[4]), Dropped, 1},
		{"replayed: drop it", k.AppendRefused(nil, 2, V2RefReplayed, tags[2]), Dropped, 0},
	}
	for _, s := range steps {
		if got := o.Settle(k, reply(s.reply)); got != s.want || o.Len() != s.left {
			t.Fatalf("%s: %v with %d left, want %v with %d", s.name, got, o.Len(), s.want, s.left)
		}
	}
}
