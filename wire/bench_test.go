package wire

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// BenchmarkOpen compares the per-frame cost of opening a reading with a
// known key: legacy (hex decode, AES-CBC, padding, JSON) against v2
// (header parse, AES-GCM with tag check, binary payload).
func BenchmarkOpen(b *testing.B) {
	legacyKey := NewLegacyKey(v2Device)
	v2Key := NewV2Key(v2Device)
	legacyFrame := legacyKey.Seal(nil, Pico, []byte(sample))
	v2Frame, err := v2Key.SealData(nil, 1, v2SamplePayload)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("legacy", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(legacyFrame)))
		ct := make([]byte, 0, 256)
		buf := make([]byte, 512)
		for b.Loop() {
			ct, _ = DecodeFrame(ct[:0], legacyFrame)
			if _, _, err := legacyKey.Open(buf, ct, Pico); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("v2", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(v2Frame)))
		buf := make([]byte, 0, 512)
		for b.Loop() {
			f, err := ParseV2(v2Frame)
			if err != nil {
				b.Fatal(err)
			}
			plain, err := v2Key.Open(buf[:0], &f)
			if err != nil {
				b.Fatal(err)
			}
			p, err := ParseV2Payload(plain)
			if err != nil {
				b.Fatal(err)
			}
			_ = p.Values.Reading()
		}
	})
}

// BenchmarkFrameReader cuts a stream of back-to-back legacy frames, as the
// edge does for one connection (no deadlines: frames end at the next one).
func BenchmarkFrameReader(b *testing.B) {
	frame := NewLegacyKey(v2Device).Seal(nil, Pico, []byte(sample))
	const perStream = 1000
	stream := bytes.Repeat(frame, perStream)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	n := 0
	for b.Loop() {
		if n%perStream == 0 {
			b.StopTimer()
			fr := NewFrameReader(bytes.NewReader(stream), FrameReaderOptions{})
			b.StartTimer()
			benchReader = fr
		}
		if _, err := benchReader.Next(); err != nil {
			b.Fatal(err)
		}
		n++
	}
}

var benchReader *FrameReader

// BenchmarkSeal is what a device (or the simulator) pays per reading: the
// two legacy encoders and v2.
func BenchmarkSeal(b *testing.B) {
	lk, vk := NewLegacyKey(v2Device), NewV2Key(v2Device)
	buf := make([]byte, 0, 512)
	for _, v := range []Variant{Pico, Pseudo} {
		b.Run("legacy-"+v.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				buf = lk.Seal(buf[:0], v, []byte(sample))
			}
		})
	}
	b.Run("v2", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var err error
			if buf, err = vk.SealData(buf[:0], 1, v2SamplePayload); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFrameReaderTCP cuts legacy frames from a loopback TCP socket,
// with the read deadlines the edge uses (idle timeout, frame timeout, idle
// gap): the per-frame cost of deadlines and reads, which the in-memory
// BenchmarkFrameReader leaves out. The writer sends frames back to back in
// writes of 16 frames, so no frame waits for the idle gap.
func BenchmarkFrameReaderTCP(b *testing.B) {
	frame := NewLegacyKey(v2Device).Seal(nil, Pico, []byte(sample))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		chunk := bytes.Repeat(frame, 16)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fr := NewFrameReader(c, FrameReaderOptions{MinBlocks: MinReadingBlocks, IdleTimeout: time.Minute})
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		if _, err := fr.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendAck is decrypt's cost per ACK: the reply's MAC with the
// key's HMAC state kept and Reset ("kept"), against an HMAC made anew for
// each reply, as before ("hmac.New"), and a device's check of the ACK.
func BenchmarkAppendAck(b *testing.B) {
	vk := NewV2Key(v2Device)
	frame, err := vk.SealData(nil, 1, v2SamplePayload)
	if err != nil {
		b.Fatal(err)
	}
	f, err := ParseV2(frame)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 64)
	b.Run("kept", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			buf = vk.AppendAck(buf[:0], f.Seq, f.Tag())
		}
	})
	b.Run("hmac.New", func(b *testing.B) {
		km := DeriveV2Keys(v2Device)
		b.ReportAllocs()
		for b.Loop() {
			m := hmac.New(sha256.New, km.ACK[:])
			var h [10]byte
			h[0] = V2Ack
			binary.BigEndian.PutUint64(h[1:], f.Seq)
			m.Write(h[:])
			m.Write(f.Tag())
			buf = appendV2Prefix(buf[:0], V2Ack, 8+V2MACLen)
			buf = binary.BigEndian.AppendUint64(buf, f.Seq)
			buf = append(buf, m.Sum(nil)[:V2MACLen]...)
		}
	})
	ack, err := ParseV2(vk.AppendAck(nil, f.Seq, f.Tag()))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("verify", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !vk.VerifyReply(&ack, frame) {
				b.Fatal("ACK does not verify")
			}
		}
	})
}
