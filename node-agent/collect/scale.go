package collect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// GroupRead is one read(2) of a perf event group opened with
// PERF_FORMAT_GROUP|TOTAL_TIME_ENABLED|TOTAL_TIME_RUNNING|ID: cumulative
// counts since the events were opened, and how long the group was enabled
// (its thread ran) and actually on the PMU.
type GroupRead struct {
	Enabled uint64
	Running uint64
	Values  []uint64
	IDs     []uint64
}

// ParseGroupRead decodes a group read into r, reusing its slices:
//
//	u64 nr; u64 time_enabled; u64 time_running; { u64 value; u64 id } [nr]
func ParseGroupRead(buf []byte, r *GroupRead) error {
	if len(buf) < 24 {
		return fmt.Errorf("group read: %d bytes, want at least 24", len(buf))
	}
	nr := binary.NativeEndian.Uint64(buf)
	if nr > MaxEvents || uint64(len(buf)) < 24+16*nr {
		return fmt.Errorf("group read: %d members in %d bytes", nr, len(buf))
	}
	r.Enabled = binary.NativeEndian.Uint64(buf[8:])
	r.Running = binary.NativeEndian.Uint64(buf[16:])
	r.Values, r.IDs = r.Values[:0], r.IDs[:0]
	for i := uint64(0); i < nr; i++ {
		off := 24 + 16*i
		r.Values = append(r.Values, binary.NativeEndian.Uint64(buf[off:]))
		r.IDs = append(r.IDs, binary.NativeEndian.Uint64(buf[off+8:]))
	}
	return nil
}

// ErrNotScheduled means the group was enabled during the interval but the
// kernel never put it on the PMU (other groups took all counters), so its
// count is unknown, not zero.
var ErrNotScheduled = errors.New("counter group not scheduled during the interval")

// ScaleDelta is the count of one event during the interval between two
// reads of its group. When the kernel multiplexes, the group was on the
// PMU only for part of the time it was enabled, and the raw count is
// extrapolated: Δvalue × Δenabled / Δrunning (deltas, not the cumulative
// values, so an earlier interval's multiplexing does not bleed into this
// one). A thread that did not run at all (Δenabled = 0) counted nothing.
// The product is computed in 128 bits, so large counts do not overflow.
func ScaleDelta(prevValue, value, prevEnabled, enabled, prevRunning, running uint64) (count uint64, multiplexed bool, err error) {
	if value < prevValue || enabled < prevEnabled || running < prevRunning {
		return 0, false, fmt.Errorf("counter went backwards (value %d->%d, enabled %d->%d, running %d->%d)",
			prevValue, value, prevEnabled, enabled, prevRunning, running)
	}
	dv, de, dr := value-prevValue, enabled-prevEnabled, running-prevRunning
	switch {
	case de == 0:
		return dv, false, nil
	case dr == 0:
		return 0, false, ErrNotScheduled
	case dr >= de:
		return dv, false, nil
	}
	hi, lo := bits.Mul64(dv, de)
	if hi >= dr {
		// Saturate rather than overflow: beyond 2^64 events per interval
		// the value is meaningless anyway.
		return ^uint64(0), true, nil
	}
	q, rem := bits.Div64(hi, lo, dr)
	if rem >= dr-rem && q != ^uint64(0) { // round half up
		q++
	}
	return q, true, nil
}
