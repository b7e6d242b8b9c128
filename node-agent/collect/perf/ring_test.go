package perf

import (
	"encoding/binary"
	"testing"

	"github.com/sidewatch/sidewatch/node-agent/collect"
)

func sampleRecord(id, ip uint64, pid, tid uint32, time uint64, misc uint16, branches []collect.Branch) []byte {
	size := 8 + 32
	if branches != nil {
		size += 8 + 24*len(branches)
	}
	b := make([]byte, size)
	binary.NativeEndian.PutUint32(b, recordSample)
	binary.NativeEndian.PutUint16(b[4:], misc)
	binary.NativeEndian.PutUint16(b[6:], uint16(size))
	binary.NativeEndian.PutUint64(b[8:], id)
	binary.NativeEndian.PutUint64(b[16:], ip)
	binary.NativeEndian.PutUint32(b[24:], pid)
	binary.NativeEndian.PutUint32(b[28:], tid)
	binary.NativeEndian.PutUint64(b[32:], time)
	if branches != nil {
		binary.NativeEndian.PutUint64(b[40:], uint64(len(branches)))
		for i, br := range branches {
			o := 48 + 24*i
			binary.NativeEndian.PutUint64(b[o:], br.From)
			binary.NativeEndian.PutUint64(b[o+8:], br.To)
			binary.NativeEndian.PutUint64(b[o+16:], 0)
		}
	}
	return b
}

func lostRecord(id, n uint64) []byte {
	b := make([]byte, 24)
	binary.NativeEndian.PutUint32(b, recordLost)
	binary.NativeEndian.PutUint16(b[6:], 24)
	binary.NativeEndian.PutUint64(b[8:], id)
	binary.NativeEndian.PutUint64(b[16:], n)
	return b
}

// writeRing writes records into a ring starting at position start (which
// may make them wrap) and returns the head.
func writeRing(data []byte, start uint64, recs ...[]byte) uint64 {
	pos := start
	for _, r := range recs {
		for i, c := range r {
			data[(pos+uint64(i))&uint64(len(data)-1)] = c
		}
		pos += uint64(len(r))
	}
	return pos
}

func TestWalkRingWraps(t *testing.T) {
	data := make([]byte, 256)
	recs := [][]byte{
		sampleRecord(7, 0x401000, 10, 11, 1000, 5, nil),
		lostRecord(7, 3),
		sampleRecord(7, 0xffffffff81000000, 10, 11, 2000, 4, []collect.Branch{{From: 1, To: 2}}),
	}
	// Start near the end so the second and third records wrap.
	const start = 200
	head := writeRing(data, start, recs...)
	var scratch []byte
	var got []record
	tail, corrupt := walkRing(data, start, head, &scratch, func(rec []byte) {
		var r record
		if err := decodeRecord(rec, layout{branchStack: len(rec) > 40}, &r); err != nil { // only the third carries branches
			t.Fatal(err)
		}
		r.branches = append([]collect.Branch(nil), r.branches...)
		got = append(got, r)
	})
	if corrupt || tail != head {
		t.Fatalf("tail %d head %d corrupt %v", tail, head, corrupt)
	}
	if len(got) != 3 {
		t.Fatalf("decoded %d records, want 3", len(got))
	}
	if g := got[0]; g.kind != recordSample || g.id != 7 || g.ip != 0x401000 || g.tid != 11 || g.time != 1000 || g.mode != collect.ModeGuestUser {
		t.Errorf("first %+v", g)
	}
	if g := got[1]; g.kind != recordLost || g.lost != 3 {
		t.Errorf("second %+v", g)
	}
	if g := got[2]; g.ip != 0xffffffff81000000 || g.mode != collect.ModeGuestKernel || len(g.branches) != 1 || g.branches[0].To != 2 {
		t.Errorf("third %+v", g)
	}
}

func TestWalkRingPartialRecordWaits(t *testing.T) {
	data := make([]byte, 64)
	rec := sampleRecord(1, 2, 3, 4, 5, 0, nil)
	head := writeRing(data, 0, rec)
	// The kernel has published only part of the record's bytes.
	tail, corrupt := walkRing(data, 0, head-8, new([]byte), func([]byte) { t.Fatal("partial record delivered") })
	if !corrupt || tail != head-8 {
		// A header claiming more bytes than published is impossible for
		// the kernel (it publishes whole records): treat as corrupt.
		t.Fatalf("tail %d corrupt %v", tail, corrupt)
	}
}

func TestDecodeRecordRejectsTruncated(t *testing.T) {
	var r record
	full := sampleRecord(1, 2, 3, 4, 5, 0, []collect.Branch{{From: 1, To: 2}, {From: 3, To: 4}})
	for n := 0; n < len(full); n++ {
		rec := append([]byte(nil), full[:n]...)
		if n >= 8 {
			binary.NativeEndian.PutUint16(rec[6:], uint16(n))
		}
		if err := decodeRecord(rec, layout{branchStack: true}, &r); err == nil && n < 48 {
			t.Errorf("a %d-byte sample decoded without error", n)
		}
	}
	if err := decodeRecord(full, layout{branchStack: true}, &r); err != nil || len(r.branches) != 2 {
		t.Fatalf("full record: %v, %d branches", err, len(r.branches))
	}
}

func FuzzWalkRing(f *testing.F) {
	data := make([]byte, 256)
	head := writeRing(data, 200, sampleRecord(1, 2, 3, 4, 5, 5, nil), lostRecord(1, 9))
	f.Add(data, uint64(200), head, true)
	f.Add(make([]byte, 64), uint64(0), uint64(64), false)
	f.Fuzz(func(t *testing.T, ring []byte, tail, head uint64, branches bool) {
		if len(ring) == 0 || len(ring)&(len(ring)-1) != 0 {
			return
		}
		var scratch []byte
		var r record
		newTail, corrupt := walkRing(ring, tail, head, &scratch, func(rec []byte) {
			_ = decodeRecord(rec, layout{branchStack: branches}, &r)
			if len(r.branches) > maxBranches {
				t.Fatalf("%d branches decoded", len(r.branches))
			}
		})
		if !corrupt && newTail > head {
			t.Fatalf("tail %d past head %d", newTail, head)
		}
	})
}
