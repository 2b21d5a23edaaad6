package wire

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// A pulse batch carries hundreds of samples per reading, and two stages
// decode it (decrypt from the device's payload, publish from READINGS):
// through encoding/json's reflection, a number at a time, that was most of
// their JSON cost. PulseBatch therefore reads its own JSON (1.7x faster on
// 250 samples; encoding/json still scans the input first, which is the
// rest). It takes a fast path for the shape devices and stages write and
// hands anything else (other key spellings, nulls, numbers that do not fit)
// to encoding/json, so the result is always what encoding/json gives
// (FuzzPulseBatchJSON checks it). Writing stays with encoding/json: a
// MarshalJSON method was slower, as encoding/json re-scans what it returns.
// (Devices no longer send JSON: v2 carries the samples as packed ADC codes.)

// pulseBatchJSON is PulseBatch without its JSON methods: the reference
// decoding.
type pulseBatchJSON PulseBatch

// UnmarshalJSON reads a batch as encoding/json would.
func (b *PulseBatch) UnmarshalJSON(data []byte) error {
	if b.decodeFast(data) {
		return nil
	}
	return json.Unmarshal(data, (*pulseBatchJSON)(b))
}

// comma separates a batch's samples.
var comma = []byte{','}

// decodeFast reads the object {"rate":n,"start":n,"samples":[n,...]} (keys
// in any order, each optional), and reports false, having changed nothing,
// for anything else. data is valid JSON: encoding/json checked it.
func (b *PulseBatch) decodeFast(data []byte) bool {
	var (
		rate, start         = b.Rate, b.Start
		samples             []float64
		haveSamples, gotAny bool
	)
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return true
	}
	for {
		key, j, ok := flatString(data, i)
		if !ok {
			return false
		}
		i = skipSpace(data, j)
		if i >= len(data) || data[i] != ':' {
			return false
		}
		i = skipSpace(data, i+1)
		switch key {
		case "rate":
			x, j, ok := floatAt(data, i)
			if !ok {
				return false
			}
			rate, i = x, j
		case "start":
			j := numberEnd(data, i)
			x, err := strconv.ParseInt(string(data[i:j]), 10, 64)
			if j == i || err != nil {
				return false
			}
			start, i = x, j
		case "samples":
			if i >= len(data) || data[i] != '[' {
				return false
			}
			// Sized once: growing by appends allocates twice the batch. The
			// array holds numbers only, so its first ']' closes it.
			end := i + max(bytes.IndexByte(data[i:], ']'), 0)
			if n := bytes.Count(data[i:end], comma) + 1; cap(samples) < n {
				samples = make([]float64, 0, n)
			}
			samples, haveSamples = samples[:0], true
			i = skipSpace(data, i+1)
			if i < len(data) && data[i] == ']' {
				i++
				break
			}
			for {
				x, j, ok := floatAt(data, i)
				if !ok {
					return false
				}
				samples = append(samples, x)
				i = skipSpace(data, j)
				if i >= len(data) {
					return false
				}
				if data[i] == ']' {
					i++
					break
				}
				if data[i] != ',' {
					return false
				}
				i = skipSpace(data, i+1)
			}
		default:
			return false
		}
		gotAny = true
		i = skipSpace(data, i)
		if i >= len(data) {
			return false
		}
		if data[i] == '}' {
			break
		}
		if data[i] != ',' {
			return false
		}
		i = skipSpace(data, i+1)
	}
	if skipSpace(data, i+1) != len(data) || !gotAny {
		return false
	}
	b.Rate, b.Start = rate, start
	if haveSamples {
		if len(samples) == 0 {
			samples = []float64{} // encoding/json makes a new empty slice
		}
		b.Samples = samples
	}
	return true
}

// floatAt reads the JSON number at data[i:] as a float64 and returns the
// index after it; ok is false for anything else (null, a string...) and
// for a number that does not fit.
func floatAt(data []byte, i int) (float64, int, bool) {
	j := numberEnd(data, i)
	x, err := strconv.ParseFloat(string(data[i:j]), 64)
	return x, j, j > i && err == nil
}

// numberEnd returns the end of the run of number characters at data[i:].
func numberEnd(data []byte, i int) int {
	j := i
	for j < len(data) {
		c := data[j]
		if (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' {
			j++
			continue
		}
		break
	}
	return j
}
