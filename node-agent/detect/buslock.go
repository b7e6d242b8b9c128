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
func (e *Engine) fineBursts(v *vmi, from, to int64, out []burst) ([]burst, int64) {
	out = out[:0]
	ring := &v.locks[0]
	period := e.cfg.samplePeriod(trace.BusLocks)
	i0, i1 := (from+e.lockNS-1)/e.lockNS, to/e.lockNS
	count := func(r *countRing) (n int64) {
		for i := i0; i < i1; i++ {
			n += int64(r.get(i))
		}
		return n
	}
	n0, n1 := count(&v.locks[0]), count(&v.locks[1])
	if n1 > n0 {
		ring = &v.locks[1]
		period = e.cfg.samplePeriod(trace.SplitLocks)
		n0 = n1
	}
	if n0 < int64(4*e.cfg.BusLock.MinBursts) {
		return out, n0
	}
	times := e.sc.tmp[:0]
	for i := i0; i < i1; i++ {
		if c := ring.get(i); c > 0 {
			times = append(times, float64(i*e.lockNS+e.lockNS/2))
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
	split, bestRatio := 0.0, 3.0
	for k := len(sorted) / 10; k+1 < len(sorted); k++ {
		if len(sorted)-1-k < e.cfg.BusLock.MinBursts-1 {
			break
		}
		lo := max(sorted[k], float64(e.lockNS))
		if r := sorted[k+1] / lo; r > bestRatio {
			bestRatio, split = r, math.Sqrt(lo*sorted[k+1])
		}
	}
	if split == 0 {
		return out, n0
	}
	minRate := e.cfg.BusLock.MinBurstRate
	cur := burst{start: int64(times[0]), end: int64(times[0]), locks: period}
	flush := func() {
		dur := float64(cur.end-cur.start) + float64(e.lockNS)
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

// burstClock finds the bit clock the burst starts sit on: the period T
// whose phase coherence R = |mean(exp(2πi·t/T))| is highest, preferring
// the longest such period (its fractions fit as well). Candidates are the
// shortest gaps and their halves, thirds and quarters, refined locally.
func burstClock(starts []float64, minT float64) (T, R float64) {
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
	coh := func(T float64) float64 {
		var c, s float64
		for _, t := range starts {
			sn, cs := math.Sincos(2 * math.Pi * (t - starts[0]) / T)
			c += cs
			s += sn
		}
		return math.Hypot(c, s) / float64(n)
	}
	type cand struct{ T, R float64 }
	var cands []cand
	seeds := []float64{gaps[0], gaps[min(1, len(gaps)-1)], gaps[min(2, len(gaps)-1)], gaps[len(gaps)/2]}
	for _, g := range seeds {
		for m := 1.0; m <= 4; m++ {
			T0 := g / m
			if T0 < minT {
				continue
			}
			bt, br := T0, 0.0
			for k := -20; k <= 20; k++ {
				t := T0 * (1 + 0.005*float64(k))
				if r := coh(t); r > br {
					bt, br = t, r
				}
			}
			cands = append(cands, cand{bt, br})
		}
	}
	for _, c := range cands {
		R = max(R, c.R)
	}
	for _, c := range cands {
		if c.R >= 0.95*R && c.T > T {
			T = c.T
		}
	}
	return T, coh(T)
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

// judgeBursts decides whether bursts recur on a clock.
func (e *Engine) judgeBursts(bs []burst, binNS int64) (lockFinding, bool) {
	cfg := e.cfg.BusLock
	if len(bs) < cfg.MinBursts {
		return lockFinding{}, false
	}
	starts := make([]float64, len(bs))
	for i, b := range bs {
		starts[i] = float64(b.start)
	}
	T, R := burstClock(starts, max(2*float64(binNS), 1e6))
	if T <= 0 {
		return lockFinding{}, false
	}
	span := starts[len(starts)-1] - starts[0] + T
	n := float64(len(bs))
	f := lockFinding{bursts: bs, periodNS: T, coherence: R, regularity: regularityOf(R), z: n * R * R, binNS: binNS}
	// The clock must explain the bursts (at least one slot in 16 holds
	// one), the phases must be significant (Rayleigh Z), and regular.
	if n*16 < span/T || f.z < 8 || f.regularity < cfg.MinRegularity {
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
		var best lockFinding
		found := false
		fine, samples := e.fineBursts(v, from, B, nil)
		if f, ok := e.judgeBursts(fine, e.lockNS); ok {
			best, found = f, true
			best.samples = samples
		}
		coarse := e.coarseBursts(v, from, B, nil)
		if f, ok := e.judgeBursts(coarse, e.coarseNS); ok && (!found || f.z > best.z) {
			best, found = f, true
			best.samples = samples
		}
		if !found {
			continue
		}
		e.emitBusLock(n, B, v, best)
	}
}

// lockReceivers ranks the other VMIs by how well their cycles per
// instruction follow the sender's lock rate: bus locks stall every
// memory access on the node, and a receiver is a loop that times them.
func (e *Engine) lockReceivers(n *node, sender *vmi, B, W int64) []end {
	I := e.coarseNS
	i0 := (max(B-W, sender.first) + I - 1) / I
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
		if u == sender || u.last < B-W/2 {
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
		if c := pearson(xs, ys); c >= 0.5 {
			out = append(out, end{v: u, role: RoleUnknown, score: c})
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

func (e *Engine) emitBusLock(n *node, B int64, sender *vmi, f lockFinding) {
	W := e.cfg.BusLock.Window.Nanoseconds()
	score := f.regularity * (1 - math.Exp(-f.z/10))
	receivers := e.lockReceivers(n, sender, B, W)
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
				WindowNS:        W,
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
		d.Evidence.EventRates = e.eventRates(B, W, vs...)
		s := &Series{}
		for i, b := range f.bursts {
			if i >= MaxSeriesPoints {
				break
			}
			s.BurstStartsNS = append(s.BurstStartsNS, b.start)
		}
		I := e.coarseNS
		i0 := (max(B-W, sender.first) + I - 1) / I
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
