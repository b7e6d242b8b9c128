package detect

import (
	"math"
	"slices"
	"sort"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// maxBursts bounds the bursts judged per window.
const maxBursts = 256

type burst struct {
	start, end int64
	locks      float64
}

type lockFinding struct {
	bursts      []burst
	periodNS    float64
	regularity  float64
	coherence   float64
	z           float64
	binNS       int64
	samples     int64
	locksPerSec float64
	// spanNS is the span searched: the window or the long horizon.
	spanNS int64
}

// coarseBursts finds bursts as runs of intervals whose lock rate (the
// larger of bus_locks and split_locks, which may count the same locks)
// reaches minBurstRate.
func (e *Engine) coarseBursts(v *vmi, from, to int64, out []burst) []burst {
	I := e.coarseNS
	rate := e.cfg.BusLock.MinBurstRate * float64(I) / 1e9
	i0, i1 := (from+I-1)/I, to/I
	out = out[:0]
	in := false
	for i := i0; i < i1 && len(out) < maxBursts; i++ {
		var locks float64
		if b := v.coarse.get(i); b != nil {
			locks = float64(max(b.c[trace.BusLocks], b.c[trace.SplitLocks]))
		}
		if locks >= rate {
			if !in {
				out = append(out, burst{start: i * I})
				in = true
			}
			out[len(out)-1].end = (i + 1) * I
			out[len(out)-1].locks += locks
		} else {
			in = false
		}
	}
	return out
}

// fineBursts clusters lock samples into bursts: the gaps between samples
// fall into short ones (inside a burst) and long ones (between bursts); the
// split is the largest jump in the sorted gaps.
func (e *Engine) fineBursts(v *vmi, long bool, from, to int64, split float64, out []burst) ([]burst, int64) {
	out = out[:0]
	rings, binNS := &v.locks, e.lockNS
	if long {
		rings, binNS = &v.locksLong, e.lockLongNS
	}
	ring := &rings[0]
	period := e.cfg.samplePeriod(trace.BusLocks)
	i0, i1 := (from+binNS-1)/binNS, to/binNS
	count := func(r *countRing) (n int64) {
		for i := i0; i < i1; i++ {
			n += int64(r.get(i))
		}
		return n
	}
	n0, n1 := count(&rings[0]), count(&rings[1])
	if n1 > n0 {
		ring = &rings[1]
		period = e.cfg.samplePeriod(trace.SplitLocks)
		n0 = n1
	}
	if n0 < int64(4*e.cfg.BusLock.MinBursts) {
		return out, n0
	}
	times := e.sc.tmp[:0]
	for i := i0; i < i1; i++ {
		if c := ring.get(i); c > 0 {
			times = append(times, float64(i*binNS+binNS/2))
		}
	}
	e.sc.tmp = times
	if len(times) < 2*e.cfg.BusLock.MinBursts {
		return out, n0
	}
	gaps := e.sc.d[:0]
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, times[i]-times[i-1])
	}
	e.sc.d = gaps
	sorted := append(e.sc.y[:0], gaps...)
	e.sc.y = sorted
	slices.Sort(sorted)
	bestRatio := 3.0
	for k := len(sorted) / 10; split == 0 && k+1 < len(sorted); k++ {
		if len(sorted)-1-k < e.cfg.BusLock.MinBursts-1 {
			break
		}
		lo := max(sorted[k], float64(binNS))
		if r := sorted[k+1] / lo; r > bestRatio {
			bestRatio = r
		}
	}
	if split == 0 {
		for k := len(sorted) / 10; k+1 < len(sorted); k++ {
			if len(sorted)-1-k < e.cfg.BusLock.MinBursts-1 {
				break
			}
			lo := max(sorted[k], float64(binNS))
			if sorted[k+1]/lo == bestRatio {
				split = math.Sqrt(lo * sorted[k+1])
				break
			}
		}
	}
	if split == 0 {
		return out, n0
	}
	minRate := e.cfg.BusLock.MinBurstRate
	cur := burst{start: int64(times[0]), end: int64(times[0]), locks: period}
	flush := func() {
		dur := float64(cur.end-cur.start) + float64(binNS)
		if cur.locks/(dur/1e9) >= minRate && len(out) < maxBursts {
			out = append(out, cur)
		}
	}
	for i := 1; i < len(times); i++ {
		if gaps[i-1] <= split {
			cur.end = int64(times[i])
			cur.locks += period
			continue
		}
		flush()
		cur = burst{start: int64(times[i]), end: int64(times[i]), locks: period}
	}
	flush()
	return out, n0
}

// burstClock finds the bit clock the bursts sit on: the period T whose
// phase coherence R = |mean(exp(2πi·t/T))| is highest, preferring the
// longest such period (its fractions fit as well). Candidates are the
// shortest gaps between starts and their halves, thirds and quarters,
// refined locally. The phases are taken from the burst starts, from their
// ends, or from both (each burst counted once): a start seen through
// sparse samples is late by the wait for the first sample and an end
// early by as much, so combining them halves the jitter when both sit on
// the clock (NRZ), while return-to-zero bursts end off the clock.
func burstClock(starts, ends []float64, minT float64) (T, R float64) {
	n := len(starts)
	if n < 3 {
		return 0, 0
	}
	gaps := make([]float64, 0, n-1)
	for i := 1; i < n; i++ {
		if g := starts[i] - starts[i-1]; g > 0 {
			gaps = append(gaps, g)
		}
	}
	if len(gaps) < 2 {
		return 0, 0
	}
	slices.Sort(gaps)
	coh := func(T float64, mode int) float64 {
		var c, s float64
		for i, t := range starts {
			var pc, ps float64
			if mode != 1 {
				sn, cs := math.Sincos(2 * math.Pi * (t - starts[0]) / T)
				pc, ps = cs, sn
			}
			if mode != 0 {
				sn, cs := math.Sincos(2 * math.Pi * (ends[i] - starts[0]) / T)
				pc, ps = pc+cs, ps+sn
			}
			if mode == 2 {
				pc, ps = pc/2, ps/2
			}
			c += pc
			s += ps
		}
		return math.Hypot(c, s) / float64(n)
	}
	type cand struct{ T, R float64 }
	var best [3]cand
	var bestMode int
	seeds := []float64{gaps[0], gaps[min(1, len(gaps)-1)], gaps[min(2, len(gaps)-1)], gaps[len(gaps)/2]}
	for mode := range 3 {
		var cands []cand
		var rmax float64
		for _, g := range seeds {
			for m := 1.0; m <= 4; m++ {
				T0 := g / m
				if T0 < minT {
					continue
				}
				// Coarse then fine search: over a window of many cycles a
				// period off by a fraction of a percent drifts a whole
				// cycle.
				bt, br := T0, 0.0
				for k := -20; k <= 20; k++ {
					t := T0 * (1 + 0.005*float64(k))
					if r := coh(t, mode); r > br {
						bt, br = t, r
					}
				}
				c := bt
				for k := -25; k <= 25; k++ {
					t := c * (1 + 0.0002*float64(k))
					if r := coh(t, mode); r > br {
						bt, br = t, r
					}
				}
				cands = append(cands, cand{bt, br})
				rmax = max(rmax, br)
			}
		}
		for _, c := range cands {
			if c.R >= 0.95*rmax && c.T > best[mode].T {
				best[mode] = c
			}
		}
		if best[mode].R > best[bestMode].R {
			bestMode = mode
		}
	}
	return best[bestMode].T, best[bestMode].R
}

// regularityOf maps a phase coherence to 1 - CV of the starts on the
// clock, where CV is the circular spread of the phases relative to that of
// uniformly random phases (so random starts score about 0, a perfect clock
// 1).
func regularityOf(R float64) float64 {
	if R <= 0 {
		return 0
	}
	if R >= 1 {
		return 1
	}
	return max(0, 1-math.Sqrt(-2*math.Log(R))/(2*math.Pi*0.2887))
}

// judgeBursts decides whether bursts recur on a clock of at least minT.
func (e *Engine) judgeBursts(bs []burst, binNS int64, minT float64) (lockFinding, bool) {
	cfg := e.cfg.BusLock
	if len(bs) < cfg.MinBursts {
		return lockFinding{}, false
	}
	starts := make([]float64, len(bs))
	ends := make([]float64, len(bs))
	for i, b := range bs {
		starts[i] = float64(b.start)
		ends[i] = float64(b.end)
	}
	// Burst starts are known to a bin: a clock of only a few bins is
	// aliased by the binning itself (on a two-bin clock every start has
	// one of two phases), so the clock needs four bins at least.
	T, R := burstClock(starts, ends, max(4*float64(binNS), 1e6, minT))
	if T <= 0 {
		return lockFinding{}, false
	}
	span := starts[len(starts)-1] - starts[0] + T
	n := float64(len(bs))
	f := lockFinding{bursts: bs, periodNS: T, coherence: R, regularity: regularityOf(R), z: n * R * R, binNS: binNS}
	// A channel's bursts also end on its clock (whole bits) or last a
	// fixed time (return to zero); bursts of ordinary software that
	// happen to start near a clock do neither.
	var ec, es float64
	durs := make([]float64, len(bs))
	for i, b := range bs {
		sn, cs := math.Sincos(2 * math.Pi * (ends[i] - starts[0]) / T)
		ec += cs
		es += sn
		durs[i] = float64(b.end - b.start)
	}
	if math.Hypot(ec, es)/n < 0.5 && 1-cv(durs) < 0.5 {
		return f, false
	}
	// The clock must explain the bursts (at least one slot in 16 holds
	// one), the phases must be significant (Rayleigh Z), and regular.
	if n*16 < span/T || f.z < 10 || f.regularity < cfg.MinRegularity {
		return f, false
	}
	var locks, dur float64
	for _, b := range bs {
		locks += b.locks
		dur += float64(b.end-b.start) + float64(binNS)
	}
	f.locksPerSec = locks / (dur / 1e9)
	return f, true
}

func (e *Engine) detectBusLock(n *node, B int64) {
	cfg := e.cfg.BusLock
	W := cfg.Window.Nanoseconds()
	for _, v := range n.vmis {
		if v.first < 0 || v.last < B-W/2 {
			continue
		}
		from := max(B-W, v.first)
		if B-from < W/2 {
			continue
		}
		best, found := e.lockPass(v, false, from, B)
		// A slow clock shows too few bursts in one window to be told from
		// chance: look for it over the long horizon.
		if H := e.longLockNS; !found && H > 0 && B-v.first > W {
			best, found = e.lockPass(v, true, max(B-H, v.first), B)
		}
		if !found {
			continue
		}
		v.lockHop = B
		n.noteLockClock(best.periodNS, B)
		e.emitBusLock(n, B, v, best)
	}
}

// lockPass looks for periodic lock bursts of v in [from, B): in the lock
// samples and in the interval counters, over the window or (long) over the
// long horizon, where only clocks with fewer than longMinCycles cycles per
// window are looked for.
func (e *Engine) lockPass(v *vmi, long bool, from, B int64) (lockFinding, bool) {
	binNS, minT := e.lockNS, 0.0
	if long {
		binNS = e.lockLongNS
		minT = float64(e.cfg.BusLock.Window.Nanoseconds()) / longMinCycles
	}
	var best lockFinding
	found := false
	fine, samples := e.fineBursts(v, long, from, B, 0, nil)
	f, ok := e.judgeBursts(fine, binNS, minT)
	if !ok && f.periodNS > 0 {
		// With the clock known, a silent slot separates bursts: split
		// the samples at gaps over half a period, so that a long wait
		// between two samples inside a burst does not start a new one.
		fine, samples = e.fineBursts(v, long, from, B, max(2*float64(binNS), f.periodNS/2), nil)
		f, ok = e.judgeBursts(fine, binNS, minT)
	}
	if ok {
		best, found = f, true
		best.samples = samples
	}
	coarse := e.coarseBursts(v, from, B, nil)
	if f, ok := e.judgeBursts(coarse, e.coarseNS, minT); ok && (!found || f.z > best.z) {
		best, found = f, true
		best.samples = samples
	}
	if debugf != nil {
		fb, _ := e.judgeBursts(fine, binNS, minT)
		cb, _ := e.judgeBursts(coarse, e.coarseNS, minT)
		debugf("B=%.1fs locks %s long=%v fine: %d bursts T=%.1fms R=%.2f Z=%.1f reg=%.2f | coarse: %d bursts T=%.1fms R=%.2f Z=%.1f found=%v", float64(B)/1e9, v.ref, long,
			len(fine), fb.periodNS/1e6, fb.coherence, fb.z, fb.regularity, len(coarse), cb.periodNS/1e6, cb.coherence, cb.z, found)
	}
	best.spanNS = B - from
	return best, found
}

// lockReceivers ranks the other VMIs by how their cycles per instruction
// follow the sender's lock rate: bus locks stall every memory access on
// the node, and a receiver is a loop that times exactly that. The rank
// (Spearman) correlation allows for the stall saturating; it is weighted by
// the size of the slowdown, since a timing loop is as memory-bound as
// software gets. Memory-bound neighbours slow down too, so up to three
// candidates are named; only the first gets the Receiver role.
//
// Only the span from the window's first burst counts: a receiver times the
// bursts while they happen, and before the channel started the sender's
// lock rate only steps from nothing to something, which any neighbour that
// happened to change its load around then would follow as well.
func (e *Engine) lockReceivers(n *node, sender *vmi, B, W int64, f lockFinding) []end {
	I := e.coarseNS
	periodNS := f.periodNS
	from := max(B-W, sender.first)
	if len(f.bursts) > 0 {
		from = max(from, f.bursts[0].start/I*I)
	}
	i0 := (from + I - 1) / I
	i1 := B / I
	N := int(i1 - i0)
	if N < 10 {
		return nil
	}
	locks := make([]float64, N)
	for j := range locks {
		if b := sender.coarse.get(i0 + int64(j)); b != nil {
			locks[j] = float64(max(b.c[trace.BusLocks], b.c[trace.SplitLocks]))
		}
	}
	var out []end
	xs := make([]float64, 0, N)
	ys := make([]float64, 0, N)
	for _, u := range n.vmis {
		if u == sender || u.last < B-e.cfg.BusLock.Window.Nanoseconds()/2 {
			continue
		}
		xs, ys = xs[:0], ys[:0]
		for j := range N {
			b := u.coarse.get(i0 + int64(j))
			if b == nil || b.c[trace.Instructions] <= 0 || b.c[trace.Cycles] <= 0 {
				continue
			}
			xs = append(xs, locks[j])
			ys = append(ys, float64(b.c[trace.Cycles]/b.c[trace.Instructions]))
		}
		if len(xs) < 10 {
			continue
		}
		c := spearman(xs, ys)
		effect := slowdown(xs, ys)
		score := 0.0
		if c >= 0.5 && effect >= 0.1 {
			score = c * min(1, effect)
		}
		// Bursts shorter than an interval average out of the counters; the
		// samples still show the receiver's loop stalling with them.
		// (The fine rings hold one window.)
		fineFrom := max(from, B-e.cfg.BusLock.Window.Nanoseconds())
		if fc := e.fineLockFollow(sender, u, fineFrom, B, periodNS); fc >= 0.5 {
			score = max(score, fc)
		}
		if debugf != nil {
			debugf("  lock receiver of %s? %s spearman=%.2f effect=%.2f fine=%.2f", sender.ref, u.ref, c, effect, e.fineLockFollow(sender, u, fineFrom, B, periodNS))
		}
		if score > 0 {
			out = append(out, end{v: u, role: RoleUnknown, score: score})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].score > out[j].score })
	if len(out) > 3 {
		out = out[:3]
	}
	if len(out) > 0 {
		out[0].role = RoleReceiver
	}
	return out
}

// fineLockFollow is how closely u's LLC-miss samples follow the sender's
// lock samples at a quarter of the burst period: |correlation|, 0 when
// either has too few samples.
func (e *Engine) fineLockFollow(sender, u *vmi, from, B int64, periodNS float64) float64 {
	if e.lockNS == 0 || e.fineNS == 0 || periodNS <= 0 {
		return 0
	}
	bin := max(e.lockNS, int64(periodNS/4)/e.lockNS*e.lockNS)
	from = max(from, sender.first, u.first)
	N := int((B - from) / bin)
	if N < 32 {
		return 0
	}
	x := make([]float64, N)
	y := make([]float64, N)
	var nx, ny float64
	for k := (from + e.lockNS - 1) / e.lockNS; k < B/e.lockNS; k++ {
		j := int((k*e.lockNS - from) / bin)
		if j >= 0 && j < N {
			c := float64(sender.locks[0].get(k)) + float64(sender.locks[1].get(k))
			x[j] += c
			nx += c
		}
	}
	for k := (from + e.fineNS - 1) / e.fineNS; k < B/e.fineNS; k++ {
		j := int((k*e.fineNS - from) / bin)
		if j >= 0 && j < N {
			c := float64(u.llc.get(k))
			y[j] += c
			ny += c
		}
	}
	if nx < float64(N)/2 || ny < float64(2*N) {
		return 0
	}
	return math.Abs(pearson(x, y))
}

// slowdown is how much higher y (cycles per instruction) is in the quarter
// of intervals with the most locks than in the quarter with the fewest.
func slowdown(locks, cpi []float64) float64 {
	idx := make([]int, len(locks))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return locks[idx[a]] < locks[idx[b]] })
	q := max(1, len(idx)/4)
	var lo, hi float64
	for k := 0; k < q; k++ {
		lo += cpi[idx[k]]
		hi += cpi[idx[len(idx)-1-k]]
	}
	if lo <= 0 {
		return 0
	}
	return hi/lo - 1
}

// spearman is the rank correlation of a and b.
func spearman(a, b []float64) float64 {
	return pearson(ranks(a), ranks(b))
}

func ranks(x []float64) []float64 {
	idx := make([]int, len(x))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(i, j int) bool { return x[idx[i]] < x[idx[j]] })
	r := make([]float64, len(x))
	for i := 0; i < len(idx); {
		j := i
		for j+1 < len(idx) && x[idx[j+1]] == x[idx[i]] {
			j++
		}
		for k := i; k <= j; k++ {
			r[idx[k]] = float64(i+j) / 2
		}
		i = j + 1
	}
	return r
}

func (e *Engine) emitBusLock(n *node, B int64, sender *vmi, f lockFinding) {
	W := e.cfg.BusLock.Window.Nanoseconds()
	// The span the evidence covers: the window, or the long horizon.
	spanNS := max(W, f.spanNS)
	score := f.regularity * (1 - math.Exp(-f.z/10))
	receivers := e.lockReceivers(n, sender, B, spanNS, f)
	if f.spanNS > W && len(receivers) == 0 {
		// Over the long horizon a clock rests on a dozen or two bursts,
		// and ordinary software that takes locks in bursts (a legacy
		// application's misaligned atomics) now and then fits one by
		// chance. A channel has a receiver timing the stalls: without a
		// co-located VMI that follows the bursts, a slow clock is not
		// evidence enough.
		return
	}
	ends := append([]end{{v: sender, role: RoleSender, score: score}}, receivers...)
	victim, suspects, ok := e.chooseVictim(ends)
	if !ok {
		return
	}
	key := episodeKey{typ: v1alpha1.BusLockCovertChannel, node: n.name, victim: victim.v.ref}
	if victim.v != sender {
		key.other = sender.ref
	}
	e.evidence(key, B, W, func() Detection {
		span := float64(f.bursts[len(f.bursts)-1].start-f.bursts[0].start) + f.periodNS
		d := Detection{
			Type:       v1alpha1.BusLockCovertChannel,
			Detector:   DetectorBusLock,
			Node:       n.name,
			Victim:     victim.v.ref,
			VictimRole: victim.role,
			Policy:     victim.v.prot.Policy,
			Suspects:   suspects,
			Score:      round3(score),
			Evidence: Evidence{
				WindowNS:        spanNS,
				TrainBinNS:      f.binNS,
				PeriodNS:        int64(f.periodNS),
				BitsPerSecond:   round3(1e9 / f.periodNS),
				Bursts:          len(f.bursts),
				BurstsPerSecond: round3(float64(len(f.bursts)) / (span / 1e9)),
				LocksPerSecond:  math.Round(f.locksPerSec),
				Regularity:      round3(f.regularity),
				Samples:         f.samples,
			},
		}
		vs := []*vmi{sender}
		for _, r := range receivers {
			vs = append(vs, r.v)
		}
		if len(receivers) > 0 {
			d.Evidence.Correlation = round3(receivers[0].score)
		}
		d.Evidence.EventRates = e.eventRates(B, spanNS, vs...)
		s := &Series{}
		for i, b := range f.bursts {
			if i >= MaxSeriesPoints {
				break
			}
			s.BurstStartsNS = append(s.BurstStartsNS, b.start)
		}
		I := e.coarseNS
		i0 := (max(B-spanNS, sender.first) + I - 1) / I
		x := make([]float64, int(B/I-i0))
		for j := range x {
			if b := sender.coarse.get(i0 + int64(j)); b != nil {
				x[j] = float64(max(b.c[trace.BusLocks], b.c[trace.SplitLocks]))
			}
		}
		s.Trains = append(s.Trains, downsampleTrain(sender.ref.String(), "bus_locks", i0*I, I, x))
		if len(receivers) > 0 {
			u := receivers[0].v
			y := make([]float64, len(x))
			for j := range y {
				if b := u.coarse.get(i0 + int64(j)); b != nil && b.c[trace.Instructions] > 0 {
					// cycles per instruction, scaled back by the train's
					// per-second conversion
					y[j] = float64(b.c[trace.Cycles]/b.c[trace.Instructions]) * float64(I) / 1e9
				}
			}
			s.Trains = append(s.Trains, downsampleTrain(u.ref.String(), "cycles_per_instruction", i0*I, I, y))
		}
		d.Series = s
		return d
	})
}
