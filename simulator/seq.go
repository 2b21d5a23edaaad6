package simulator

import "github.com/medpipe/medpipe/wire"

// Every simulated reading carries its per-device sequence number, so that
// whoever receives readings (tests, the bench) can count loss, duplicates
// and reordering from the values alone, legacy format included: the
// sequence modulo 10,000 replaces the last (thousandths) digit of Temp,
// TempMcu, Acel_z and TempMpu, most significant first. Each value moves by
// less than 0.01, below what the sensors resolve.
var seqFields = [4]wire.Field{wire.Temp, wire.TempMcu, wire.AcelZ, wire.TempMpu}

// SeqFields returns the values that carry the sequence number, most
// significant first: what DecodeSeq takes, in its order.
func SeqFields() [4]wire.Field { return seqFields }

// SeqModulus is where encoded sequence numbers wrap.
const SeqModulus = 10000

// EncodeSeq writes seq into r's insignificant digits. The fields must be
// formatted with three decimals (non-negative), as Signal makes them.
func EncodeSeq(r *wire.Reading, seq uint64) {
	n := seq % SeqModulus
	for i := len(seqFields) - 1; i >= 0; i-- {
		f := seqFields[i]
		b := []byte(r[f])
		b[len(b)-1] = byte('0' + n%10)
		r[f] = string(b)
		n /= 10
	}
}

// DecodeSeq reads the sequence number (modulo SeqModulus) from a reading's
// values; ok is false when they do not carry one.
func DecodeSeq(values [4]string) (seq uint64, ok bool) {
	for _, v := range values {
		if len(v) == 0 || v[len(v)-1] < '0' || v[len(v)-1] > '9' {
			return 0, false
		}
		seq = seq*10 + uint64(v[len(v)-1]-'0')
	}
	return seq, true
}

// SeqValues picks the values DecodeSeq needs from a reading.
func SeqValues(r *wire.Reading) [4]string {
	return [4]string{r[seqFields[0]], r[seqFields[1]], r[seqFields[2]], r[seqFields[3]]}
}
