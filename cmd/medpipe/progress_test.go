package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/medpipe/medpipe/replay"
)

func TestProgressBar(t *testing.T) {
	cases := []struct {
		p    replay.Progress
		want string
	}{
		{replay.Progress{Frames: 2000, Readings: 300, Done: 2000, Total: 4000, Unit: "frames", Elapsed: 2 * time.Second},
			"\r[===============               ]  50% 2000/4000 frames, 300 readings, 1000 frames/s, ETA 2s   "},
		{replay.Progress{Frames: 10, Done: 5e5, Total: 1e6, Unit: "bytes", Elapsed: time.Second, Final: true},
			"\r[===============               ]  50% 10 frames (0.5/1.0 MB read), 0 readings, 10 frames/s, ETA 1s\n"},
		{replay.Progress{Frames: 7, Elapsed: time.Second},
			"\r[??????????????????????????????]   ?% 7 frames, 0 readings, 7 frames/s   "},
	}
	for _, c := range cases {
		var b bytes.Buffer
		progressBar(&b)(c.p)
		if b.String() != c.want {
			t.Errorf("got  %q\nwant %q", b.String(), c.want)
		}
	}
}
