package wire

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestReadKeys(t *testing.T) {
	const secret = "SECRETSECRET1234"
	tests := []struct {
		name    string
		in      string
		n       int
		errLine string
	}{
		{name: "today's format", in: `{ "id":"iot_med_dev_01", "key":"1234567890123456", "iv":"AAAAAAAAAAAAAAAA"}` + "\n" + `{ "id":"iot_med_dev_02", "key":"AAAAAAAAAAAAAAAA", "iv":"AAAAAAAAAAAAAAAA"}`, n: 2},
		{name: "blank and comment lines", in: "\n# fleet A\n" + `{"id":"a","key":"1234567890123456","iv":"AAAAAAAAAAAAAAAA","note":"x"}` + "\n\n", n: 1},
		{name: "short key", in: `{"id":"a","key":"123","iv":"AAAAAAAAAAAAAAAA"}`, errLine: "line 1"},
		{name: "missing iv", in: "\n" + `{"id":"a","key":"1234567890123456"}`, errLine: "line 2"},
		{name: "bad id", in: `{"id":"a.b","key":"1234567890123456","iv":"AAAAAAAAAAAAAAAA"}`, errLine: "line 1"},
		{name: "duplicate", in: `{"id":"a","key":"1234567890123456","iv":"AAAAAAAAAAAAAAAA"}` + "\n" + `{"id":"a","key":"1234567890123456","iv":"AAAAAAAAAAAAAAAA"}`, errLine: "line 2"},
		{name: "syntax error near a secret", in: `{"id":"a","key":"` + secret + `,"iv":"AAAAAAAAAAAAAAAA"}`, errLine: "line 1"},
		{name: "key not a string", in: `{"id":"a","key":1234567890123456,"iv":"AAAAAAAAAAAAAAAA"}`, errLine: "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devs, err := ReadKeys(strings.NewReader(tt.in))
			if tt.errLine != "" {
				if err == nil || !errors.Is(err, ErrKeysFile) || !strings.Contains(err.Error(), tt.errLine) {
					t.Fatalf("error %v, want one naming %s", err, tt.errLine)
				}
				if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "12345678") {
					t.Fatalf("error quotes key material: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(devs) != tt.n {
				t.Fatalf("%d devices, want %d", len(devs), tt.n)
			}
			for _, d := range devs {
				if s := fmt.Sprintf("%v %+v %#v %s", d, d, d, d); strings.Contains(s, "1234567890") {
					t.Fatalf("Device formatting leaks the key: %s", s)
				}
			}
		})
	}
}

func TestAppendKeyLineRoundTrip(t *testing.T) {
	d := Device{ID: "sim-1", Key: [16]byte([]byte(`abc"def\ghij1234`)), IV: [16]byte([]byte("AAAAAAAAAAAAAAAA"))}
	devs, err := ReadKeys(strings.NewReader(string(AppendKeyLine(nil, d))))
	if err != nil || len(devs) != 1 || devs[0] != d {
		t.Fatalf("round trip: %v %v", devs, err)
	}
}

func FuzzReadKeys(f *testing.F) {
	f.Add([]byte(`{ "id":"iot_med_dev_01", "key":"1234567890123456", "iv":"AAAAAAAAAAAAAAAA"}`))
	f.Add([]byte("#\n\n{}"))
	f.Fuzz(func(t *testing.T, in []byte) {
		devs, err := ReadKeys(strings.NewReader(string(in)))
		if err != nil {
			return
		}
		for _, d := range devs {
			if !ValidID(d.ID) {
				t.Fatalf("accepted id %q", d.ID)
			}
		}
	})
}
