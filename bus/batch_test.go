package bus

import (
	"errors"
	"reflect"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/medpipe/medpipe/wire"
)

func sampleBatch() []KeyedReading {
	missing := sampleV2Reading()
	missing.Sensors[wire.TempSensor], missing.Values.Temp, missing.Numbers.Temp = wire.SensorMissing, "", 0
	return []KeyedReading{
		{Reading: sampleReading()},
		{Reading: adcReading(250), KeyGen: "3"},
		{Reading: missing, KeyGen: "1"},
	}
}

func TestReadingBatchRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		rs   []KeyedReading
	}{
		{"three", sampleBatch()},
		{"one", sampleBatch()[1:2]},
		{"none", []KeyedReading{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := AppendReadingBatch([]byte("prefix"), tc.rs)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeReadings(b[len("prefix"):], nil)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.rs) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tc.rs)
			}
		})
	}
}

// TestDecodeReadingsSingle: a message of one reading decodes as a batch
// of one, its key generation taken from the header.
func TestDecodeReadingsSingle(t *testing.T) {
	r := adcReading(25)
	b, err := AppendReading(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeReadings(b, nats.Header{HeaderKeyGen: {"7"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []KeyedReading{{Reading: r, KeyGen: "7"}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if _, err := DecodeReadings([]byte("not a reading"), nil); err == nil {
		t.Fatal("garbage decoded")
	}
}

// TestDecodeReadingsKeepsGoodOnes: a reading that does not check costs
// only itself; broken framing costs the message, and says so.
func TestDecodeReadingsKeepsGoodOnes(t *testing.T) {
	rs := sampleBatch()
	bad := *rs[1].Reading
	bad.Device = "no spaces allowed"
	rs[1].Reading = &bad
	b, err := AppendReadingBatch(nil, rs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeReadings(b, nil)
	if err == nil || len(got) != 2 || got[0].Device != rs[0].Device || got[1].KeyGen != "1" {
		t.Fatalf("got %d readings, err %v; want the 2 good ones and an error", len(got), err)
	}
	good, _ := AppendReadingBatch(nil, sampleBatch())
	for n := 1; n < len(good); n++ {
		got, err := DecodeReadings(good[:n], nil)
		if err == nil {
			t.Fatalf("a batch cut to %d of %d bytes decoded", n, len(good))
		}
		if len(got) != 0 && !errors.Is(err, ErrReadingBatch) {
			t.Fatalf("cut to %d: %d readings with %v", n, len(got), err)
		}
	}
	if _, err := DecodeReadings(append(good, 0), nil); !errors.Is(err, ErrReadingBatch) {
		t.Fatalf("a trailing byte: %v", err)
	}
	if _, err := DecodeReadings([]byte{readingBatchV1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F}, nil); !errors.Is(err, ErrReadingBatch) {
		t.Fatalf("a count of 4 billion: %v", err)
	}
}

func FuzzDecodeReadings(f *testing.F) {
	b, _ := AppendReadingBatch(nil, sampleBatch())
	f.Add(b)
	f.Add([]byte{readingBatchV1, 0})
	one, _ := AppendReading(nil, sampleReading())
	f.Add(one)
	f.Fuzz(func(t *testing.T, b []byte) {
		rs, err := DecodeReadings(b, nil)
		if err != nil && len(rs) > 0 && errors.Is(err, ErrReadingBatch) {
			t.Fatalf("readings returned with a framing error: %v", err)
		}
		if len(rs) == 0 {
			return
		}
		// What decodes re-encodes to a batch that decodes the same.
		again, err := AppendReadingBatch(nil, rs)
		if err != nil {
			t.Fatal(err)
		}
		rs2, err := DecodeReadings(again, nil)
		if err != nil || len(rs2) != len(rs) {
			t.Fatalf("re-encoded batch: %d readings, %v; want %d", len(rs2), err, len(rs))
		}
		for i := range rs {
			if rs2[i].KeyGen != rs[i].KeyGen || rs2[i].Device != rs[i].Device || rs2[i].RawSeq != rs[i].RawSeq {
				t.Fatalf("reading %d differs after re-encoding", i)
			}
		}
	})
}
