package detect

import "github.com/sidewatch/sidewatch/node-agent/trace"

const noIndex = -1 << 62

// coarseBin holds one interval of one VMI: counter totals (summed over its
// vCPUs), which counters reported, and how many samples fell in the
// interval and in sensitive code.
type coarseBin struct {
	c         [trace.NumCounters + 1]float32
	samples   uint16
	sensitive uint16
	has       uint8 // bit c: counter c reported in this interval
	sig       int8  // signature of the last sensitive sample, -1 none
	_         [2]byte
}

// coarseRing keeps the newest len(bins) intervals, indexed by absolute bin
// number (time / interval).
type coarseRing struct {
	bins []coarseBin
	head int64
}

func newCoarseRing(n int) coarseRing {
	return coarseRing{bins: make([]coarseBin, n), head: noIndex}
}

// at returns the bin with absolute index i, advancing the ring (and clearing
// reused bins) when i is new, or nil when i has already left the ring.
func (r *coarseRing) at(i int64) *coarseBin {
	n := int64(len(r.bins))
	if i > r.head {
		if r.head == noIndex || i-r.head >= n {
			clear(r.bins)
			for k := range r.bins {
				r.bins[k].sig = -1
			}
		} else {
			for k := r.head + 1; k <= i; k++ {
				r.bins[k%n] = coarseBin{sig: -1}
			}
		}
		r.head = i
	} else if i <= r.head-n || i < 0 {
		return nil
	}
	return &r.bins[i%n]
}

// get returns bin i or nil when it is not (or no longer) in the ring. It
// never advances the ring.
func (r *coarseRing) get(i int64) *coarseBin {
	n := int64(len(r.bins))
	if i > r.head || i <= r.head-n || i < 0 {
		return nil
	}
	return &r.bins[i%n]
}

// countRing counts events (samples) per fine bin, saturating at 65535.
type countRing struct {
	bins  []uint16
	head  int64
	total int64 // samples ever added, for activity checks
}

func newCountRing(n int) countRing { return countRing{bins: make([]uint16, n), head: noIndex} }

func (r *countRing) add(i int64) bool {
	n := int64(len(r.bins))
	if i > r.head {
		if r.head == noIndex || i-r.head >= n {
			clear(r.bins)
		} else {
			for k := r.head + 1; k <= i; k++ {
				r.bins[k%n] = 0
			}
		}
		r.head = i
	} else if i <= r.head-n || i < 0 {
		return false
	}
	if b := &r.bins[i%n]; *b < 65535 {
		*b++
	}
	r.total++
	return true
}

func (r *countRing) get(i int64) uint16 {
	n := int64(len(r.bins))
	if i > r.head || i <= r.head-n || i < 0 {
		return 0
	}
	return r.bins[i%n]
}

// sum adds bins [from, to) into out, factor native bins per output bin,
// and returns the total count.
func (r *countRing) sum(from, to int64, factor int, out []float64) int64 {
	var total int64
	for j := range out {
		var s int64
		base := from + int64(j*factor)
		for k := 0; k < factor; k++ {
			if i := base + int64(k); i < to {
				s += int64(r.get(i))
			}
		}
		out[j] = float64(s)
		total += s
	}
	return total
}
