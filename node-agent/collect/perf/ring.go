package perf

import (
	"encoding/binary"
	"fmt"

	"github.com/sidewatch/sidewatch/node-agent/collect"
)

// Record types of the perf ring buffer (include/uapi/linux/perf_event.h).
const (
	recordLost       = 2
	recordThrottle   = 5
	recordUnthrottle = 6
	recordSample     = 9
)

// maxBranches bounds a decoded branch stack (Intel LBR has 32 entries).
const maxBranches = 64

// layout says which optional fields the samples carry. Samples always
// carry PERF_SAMPLE_IDENTIFIER|IP|TID|TIME, in that order.
type layout struct {
	branchStack bool
}

// record is one decoded ring buffer record.
type record struct {
	kind uint32
	mode collect.CPUMode
	id   uint64
	ip   uint64
	pid  uint32
	tid  uint32
	time uint64
	lost uint64
	// branches is filled for samples with a branch stack; it is reused.
	branches []collect.Branch
}

// decodeRecord parses one record, header included. Records of other types
// are returned with only kind set. A malformed record is an error; the
// caller skips it (its size is in the header it already checked).
func decodeRecord(rec []byte, l layout, r *record) error {
	if len(rec) < 8 {
		return fmt.Errorf("perf record: %d bytes, shorter than its header", len(rec))
	}
	r.kind = binary.NativeEndian.Uint32(rec)
	misc := binary.NativeEndian.Uint16(rec[4:])
	r.mode = collect.CPUMode(misc & 0x7)
	body := rec[8:]
	switch r.kind {
	case recordSample:
		// id, ip, pid+tid, time
		if len(body) < 32 {
			return fmt.Errorf("perf sample: %d bytes, want at least 32", len(body))
		}
		r.id = binary.NativeEndian.Uint64(body)
		r.ip = binary.NativeEndian.Uint64(body[8:])
		r.pid = binary.NativeEndian.Uint32(body[16:])
		r.tid = binary.NativeEndian.Uint32(body[20:])
		r.time = binary.NativeEndian.Uint64(body[24:])
		r.branches = r.branches[:0]
		if !l.branchStack {
			return nil
		}
		body = body[32:]
		if len(body) < 8 {
			return fmt.Errorf("perf sample: no branch stack count")
		}
		nr := binary.NativeEndian.Uint64(body)
		body = body[8:]
		if nr > uint64(len(body))/24 {
			return fmt.Errorf("perf sample: branch stack of %d entries in %d bytes", nr, len(body))
		}
		for i := uint64(0); i < nr && i < maxBranches; i++ {
			e := body[24*i:]
			r.branches = append(r.branches, collect.Branch{
				From: binary.NativeEndian.Uint64(e),
				To:   binary.NativeEndian.Uint64(e[8:]),
			})
		}
	case recordLost:
		if len(body) < 16 {
			return fmt.Errorf("perf lost record: %d bytes, want 16", len(body))
		}
		r.id = binary.NativeEndian.Uint64(body)
		r.lost = binary.NativeEndian.Uint64(body[8:])
	case recordThrottle, recordUnthrottle:
		if len(body) < 16 {
			return fmt.Errorf("perf throttle record: %d bytes, want 16", len(body))
		}
		r.time = binary.NativeEndian.Uint64(body)
		r.id = binary.NativeEndian.Uint64(body[8:])
	}
	return nil
}

// walkRing calls fn for each record between tail and head of a ring's
// data area (whose length is a power of two), copying records that wrap
// around the end into scratch. It returns the new tail: the position after
// the last complete record. A record with an impossible size ends the walk
// at head, dropping the rest, since nothing after it can be framed.
func walkRing(data []byte, tail, head uint64, scratch *[]byte, fn func(rec []byte)) (newTail uint64, corrupt bool) {
	size := uint64(len(data))
	if size == 0 || head < tail || head-tail > size {
		return head, true
	}
	for head-tail >= 8 {
		off := tail & (size - 1)
		var hdr [8]byte
		copyWrapped(hdr[:], data, off)
		recSize := uint64(binary.NativeEndian.Uint16(hdr[6:]))
		if recSize < 8 || recSize > head-tail {
			return head, true
		}
		var rec []byte
		if off+recSize <= size {
			rec = data[off : off+recSize]
		} else {
			if uint64(cap(*scratch)) < recSize {
				*scratch = make([]byte, recSize)
			}
			rec = (*scratch)[:recSize]
			copyWrapped(rec, data, off)
		}
		fn(rec)
		tail += recSize
	}
	return tail, false
}

func copyWrapped(dst, ring []byte, off uint64) {
	n := copy(dst, ring[off:])
	if n < len(dst) {
		copy(dst[n:], ring)
	}
}
