package detect

import (
	"math"
	"sort"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// hopState is one VMI's findings of the current analysis.
type hopState struct {
	osc   [numRes]trainOsc // strongest per resolution
	cands [8]trainOsc      // every oscillation found: fine octaves, coarse, over both horizons
	n     int
}

func (h *hopState) add(o trainOsc) {
	if o.ok && h.n < len(h.cands) {
		h.cands[h.n] = o
		h.n++
	}
}

// debugf, when set by a test, traces the detectors' decisions.
var debugf func(format string, args ...any)

// Resolutions of the cache trains: from overflow samples (fine) or the
// interval counters (coarse), over the detector window or the long
// horizon.
const (
	resFine = iota
	resCoarse
	resFineLong
	resCoarseLong
	numRes
)

func isFine(res int) bool { return res == resFine || res == resFineLong }
func isLong(res int) bool { return res == resFineLong || res == resCoarseLong }

// longBins is the length of the long horizon's sample trains.
const longBins = 4096

// longMinCycles: the long horizon looks only for periods with fewer
// cycles than this in one detector window (slow channels); faster ones
// show enough cycles in the window itself.
const longMinCycles = 64

// cacheHorizon is the span the trains of resolution res cover.
func (e *Engine) cacheHorizon(res int) int64 {
	if isLong(res) {
		return e.longCacheNS
	}
	return e.cfg.CacheOscillation.Window.Nanoseconds()
}

// llcRing is v's LLC-miss sample ring for a fine resolution, and its bin.
func (e *Engine) llcRing(v *vmi, res int) (*countRing, int64) {
	if isLong(res) {
		return &v.llcLong, e.llcLongNS
	}
	return &v.llc, e.fineNS
}

// minPeriodFor is the shortest period searched at resolution res.
func (e *Engine) minPeriodFor(res int) float64 {
	p := float64(e.cfg.CacheOscillation.MinPeriod.Nanoseconds())
	if isLong(res) {
		p = max(p, float64(e.cfg.CacheOscillation.Window.Nanoseconds())/longMinCycles)
	}
	return p
}

// minSamplesPerFineBin is the mean number of LLC-miss samples a fine bin
// must hold: fewer and the train is Poisson noise.
const minSamplesPerFineBin = 2

// fineTrain fills x with v's LLC-miss sample counts from from, at fine
// resolution res, in bins of factor native bins.
func (e *Engine) fineTrain(v *vmi, res int, from int64, factor int, x []float64) int64 {
	ring, nat := e.llcRing(v, res)
	i0 := (from + nat - 1) / nat
	return ring.sum(i0, i0+int64(len(x)*factor), factor, x)
}

func (e *Engine) fineOsc(v *vmi, rs int, from, to int64) trainOsc {
	cfg := e.cfg.CacheOscillation
	ring, natNS := e.llcRing(v, rs)
	i0, i1 := (from+natNS-1)/natNS, to/natNS
	nat := int(i1 - i0)
	if nat < 64 {
		return trainOsc{}
	}
	e.sc.x = grow(e.sc.x, 1)
	S := ring.sum(i0, i1, nat, e.sc.x)
	if S < 64 {
		return trainOsc{}
	}
	factor := max(1, int(math.Ceil(float64(minSamplesPerFineBin*nat)/float64(S))))
	for nat/factor > e.cfg.MaxFineBins {
		factor++
	}
	// Three octaves of resolution: the finest resolves short periods,
	// the coarser ones average the sampling (Poisson) noise of slower
	// channels away.
	var best trainOsc
	// The finest train is read from the ring once; each coarser octave
	// sums pairs of bins of the previous one.
	N := nat / factor
	e.sc.fine = grow(e.sc.fine, N)
	samples := e.fineTrain(v, rs, from, factor, e.sc.fine)
	x := e.sc.fine
	for oct := 0; oct < 3; oct++ {
		if oct > 0 {
			N /= 2
			for i := range N {
				x[i] = x[2*i] + x[2*i+1]
			}
			x = x[:N]
			factor *= 2
		}
		binNS := int64(factor) * natNS
		if 2*binNS > e.coarseNS {
			// No finer than the counters already give.
			break
		}
		minLag := max(4, e.minPeriodFor(rs)/float64(binNS))
		maxLag := min(float64(cfg.MaxPeriod.Nanoseconds())/float64(binNS), float64(N)/float64(cfg.MinRepetitions))
		if N < 32 || maxLag < minLag {
			break
		}
		res, r := e.sc.analyseTrain(x, minLag, maxLag)
		dense := float64(samples)/float64(N) >= 8
		if res.ok && res.strength <= best.strength {
			res.binNS, res.res, res.startNS, res.samples = binNS, rs, i0*natNS, samples
			res.periodNS *= float64(binNS)
			res.acLagNS *= float64(binNS)
			v.hop.add(res)
		}
		if !res.ok || res.strength <= best.strength {
			if dense {
				break
			}
			continue
		}
		res.binNS = binNS
		res.res = rs
		res.startNS = i0 * natNS
		res.samples = samples
		res.periodNS *= float64(binNS)
		res.acLagNS *= float64(binNS)
		e.keepCurve(v, r, res)
		v.hop.add(res)
		best = res
		if dense {
			// Sampling noise is already small: coarser octaves add
			// nothing but cost.
			break
		}
	}
	return best
}

// coarseTrain fills x with counter c of v per interval from bin i0.
func (e *Engine) coarseTrain(v *vmi, c trace.Event, i0 int64, x []float64) (present int) {
	for j := range x {
		b := v.coarse.get(i0 + int64(j))
		if b == nil {
			x[j] = 0
			continue
		}
		x[j] = float64(b.c[c])
		if b.has&(1<<c) != 0 {
			present++
		}
	}
	return present
}

func (e *Engine) coarseOsc(v *vmi, rs int, from, to int64) trainOsc {
	cfg := e.cfg.CacheOscillation
	I := e.coarseNS
	i0, i1 := (from+I-1)/I, to/I
	N := int(i1 - i0)
	minLag := max(4, e.minPeriodFor(rs)/float64(I))
	maxLag := min(float64(cfg.MaxPeriod.Nanoseconds())/float64(I), float64(N)/float64(cfg.MinRepetitions))
	if N < 24 || maxLag < minLag {
		return trainOsc{}
	}
	e.sc.x = grow(e.sc.x, N)
	if present := e.coarseTrain(v, trace.LLCMisses, i0, e.sc.x); present*10 < N*7 {
		return trainOsc{}
	}
	res, r := e.sc.analyseTrain(e.sc.x, minLag, maxLag)
	if !res.ok {
		return trainOsc{}
	}
	res.binNS = I
	res.res = rs
	res.startNS = i0 * I
	res.periodNS *= float64(I)
	res.acLagNS *= float64(I)
	e.keepCurve(v, r, res)
	return res
}

// keepCurve stores the autocorrelation around the peak for the series of a
// later detection, when it belongs to v's strongest train so far.
func (e *Engine) keepCurve(v *vmi, r []float64, res trainOsc) {
	if len(v.acCurve) > 0 && v.acStrength >= res.strength {
		return
	}
	v.acStrength = res.strength
	lag := res.acLagNS
	if lag <= 0 {
		lag = res.periodNS
	}
	lagBins := lag / float64(res.binNS)
	n := min(len(r), int(3*lagBins)+2)
	if n < 2 {
		return
	}
	step := max(1, (n+MaxSeriesPoints-1)/MaxSeriesPoints)
	v.acCurve = grow(v.acCurve, 0)
	for k := 0; k < n; k += step {
		v.acCurve = append(v.acCurve, float32(r[k]))
	}
	v.acCurveLag = res.binNS * int64(step)
}

type covertPair struct {
	a, b     *vmi
	oa, ob   trainOsc
	res      int
	score    float64
	rho      float64
	dataRho  float64
	lagBins  float64
	periodNS float64
	binNS    int64
}

func periodsMatch(p, q float64, binNS int64) bool {
	tol := 0.06*max(p, q) + 1.5*float64(binNS)
	if math.Abs(p-q) <= tol {
		return true
	}
	lo, hi := min(p, q), max(p, q)
	return math.Abs(hi-2*lo) <= 0.06*hi+1.5*float64(binNS)
}

func (e *Engine) detectCacheOscillation(n *node, B int64) {
	cfg := e.cfg.CacheOscillation
	W := cfg.Window.Nanoseconds()
	cands := e.sc.cand[:0]
	followers := e.sc.followers[:0]
	for _, v := range n.vmis {
		v.hop = hopState{}
		v.acCurve = v.acCurve[:0]
		v.acCurveLag = 0
		v.acStrength = 0
		if v.first < 0 || v.last < B-W/2 {
			continue
		}
		from := max(B-W, v.first)
		if B-from < W/2 {
			continue
		}
		if e.fineNS > 0 {
			v.hop.osc[resFine] = e.fineOsc(v, resFine, from, B)
		}
		v.hop.osc[resCoarse] = e.coarseOsc(v, resCoarse, from, B)
		v.hop.add(v.hop.osc[resCoarse])
		// Slow channels: the same over the long horizon, once there is
		// more history than one window.
		if H := e.longCacheNS; H > 0 && B-v.first > W {
			fromL := max(B-H, v.first)
			v.hop.osc[resFineLong] = e.fineOsc(v, resFineLong, fromL, B)
			v.hop.osc[resCoarseLong] = e.coarseOsc(v, resCoarseLong, fromL, B)
			v.hop.add(v.hop.osc[resCoarseLong])
		}
		if debugf != nil {
			debugf("B=%.1fs %s fine=%+v coarse=%+v fineLong=%+v coarseLong=%+v", float64(B)/1e9, v.ref, v.hop.osc[resFine], v.hop.osc[resCoarse], v.hop.osc[resFineLong], v.hop.osc[resCoarseLong])
		}
		if v.lockHop > 0 && B-v.lockHop <= W || e.meanLockRate(v, B, W) >= e.cfg.BusLock.MinBurstRate {
			// Its trains move with its own bus-lock bursts: a bus-lock
			// channel, reported by that detector.
			continue
		}
		osc := false
		for _, o := range v.hop.osc {
			osc = osc || o.strength >= 0.8*cfg.MinAutocorrelation
		}
		if osc {
			cands = append(cands, v)
		} else {
			followers = append(followers, v)
		}
	}
	e.sc.cand, e.sc.followers = cands, followers
	if len(cands) == 0 {
		return
	}
	var pairs []covertPair
	for i := 0; i < len(cands); i++ {
		for j := i + 1; j < len(cands); j++ {
			if p, ok := e.pairCovert(cands[i], cands[j], B); ok {
				pairs = append(pairs, p)
			}
		}
		// A receiver whose own train is too sparse to show the clock can
		// still be told by how closely it follows the data of a VMI that
		// does oscillate.
		for _, f := range followers {
			if p, ok := e.pairFollower(cands[i], f, B); ok {
				pairs = append(pairs, p)
			}
		}
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i].score > pairs[j].score })
	used := map[*vmi]bool{}
	for _, p := range pairs {
		if used[p.a] || used[p.b] {
			continue
		}
		used[p.a], used[p.b] = true, true
		if n.lockClockExplains(p.periodNS, p.binNS, B, W) {
			// Bus locks stall every memory access on the node: two
			// memory-bound VMIs oscillate together on a lock channel's
			// clock, which the bus-lock detector reports.
			if debugf != nil {
				debugf("  pair %s %s at %.1fms: a bus-lock clock on the node explains it", p.a.ref, p.b.ref, p.periodNS/1e6)
			}
			continue
		}
		e.emitCovert(n, B, p)
	}
}

// meanLockRate is v's bus (or split) lock rate per second over the window.
func (e *Engine) meanLockRate(v *vmi, B, W int64) float64 {
	I := e.coarseNS
	i0, i1 := (max(B-W, v.first)+I-1)/I, B/I
	var s float64
	for i := i0; i < i1; i++ {
		if b := v.coarse.get(i); b != nil {
			s += float64(max(b.c[trace.BusLocks], b.c[trace.SplitLocks]))
		}
	}
	if i1 <= i0 {
		return 0
	}
	return s / (float64((i1-i0)*I) / 1e9)
}

// minDataCV is the least coefficient of variation of an end's per-cycle
// activity for it to carry data.
const minDataCV = 0.1

// minDataCVLong is the same over the long horizon, where slow cycles are
// long and a bit moves a whole cycle's activity.
const minDataCVLong = 0.3

func cv(x []float64) float64 {
	m := meanOf(x)
	if m <= 0 {
		return 0
	}
	var v float64
	for _, a := range x {
		v += (a - m) * (a - m)
	}
	return math.Sqrt(v/float64(len(x))) / m
}

// diff replaces x[i] by x[i+1]-x[i]; the last element is left over.
func diff(x []float64) {
	for i := 0; i+1 < len(x); i++ {
		x[i] = x[i+1] - x[i]
	}
}

// quietPhase returns the offset (in bins, within one period) at which the
// summed activity of x (from offA) and y (from offB) folded on period pb is
// lowest.
func (e *Engine) quietPhase(x, y []float64, pb, offA, offB float64) float64 {
	nph := max(2, min(256, int(pb)))
	e.sc.fold = grow(e.sc.fold, nph)
	clear(e.sc.fold)
	add := func(v []float64, off float64) {
		for i := int(math.Ceil(off)); i < len(v); i++ {
			ph := int(math.Mod(float64(i)-off, pb) / pb * float64(nph))
			e.sc.fold[min(ph, nph-1)] += v[i]
		}
	}
	add(x, offA)
	add(y, offB)
	best := 0
	for k, v := range e.sc.fold {
		if v < e.sc.fold[best] {
			best = k
		}
	}
	return (float64(best) + 0.5) * pb / float64(nph)
}

// dataCoupling is the correlation of the per-cycle activity of a and b
// (already in sc.rx, sc.ry) that no single other VMI on the node, nor the
// rest of the node together, explains: the smallest partial correlation
// given each of them. It is capped below the threshold when too few cycles
// make it insignificant.
func (e *Engine) dataCoupling(a, b *vmi, res int, binNS int64, B int64, N int, pb, off float64) float64 {
	cfg := e.cfg.CacheOscillation
	nc := min(len(e.sc.rx), len(e.sc.ry))
	if nc < cfg.MinRepetitions-1 || nc < 5 {
		return 0
	}
	// Carrying data means moving a good part of each end's activity from
	// one cycle to the next (a bit switches the channel's evictions on or
	// off); two steady memory-heavy jobs interfering with each other move
	// only a few percent of theirs, however closely.
	if debugf != nil {
		debugf("    cv %.2f %.2f nc=%d", cv(e.sc.rx[:nc]), cv(e.sc.ry[:nc]), nc)
	}
	minCV := minDataCV
	if isLong(res) {
		// Over the long horizon the coupling is judged by ranks, which
		// make a few percent of background wobble (timer work, co-runner
		// interference on two jobs firing together every second) look as
		// orderly as a bit switching the evictions on and off; so there
		// the activity itself must move by as much as data moves it.
		minCV = minDataCVLong
	}
	if cv(e.sc.rx[:nc]) < minCV || cv(e.sc.ry[:nc]) < minCV {
		return 0
	}
	// Data changes from one cycle to the next; what drifts slowly (two
	// periodic jobs beating against each other, load trends) does not. So
	// the cycle sums are compared by their cycle-to-cycle changes.
	diff(e.sc.rx[:nc])
	diff(e.sc.ry[:nc])
	nc--
	ra, rb := e.sc.rx[:nc], e.sc.ry[:nc]
	// Over the long horizon, by ranks. Its cycles are long (slow
	// candidates) and many, so they take in whole bursts of ordinary
	// software, and one large event (a checkpoint, a load spike) that
	// also disturbs a neighbour through the shared cache would carry a
	// linear correlation on its own; a channel changes its ends' activity
	// alike over many cycles. Within the window the linear correlation
	// stays: there a constant carrier's data is its few pauses between
	// messages.
	ranks := isLong(res)
	if ranks {
		e.sc.rankInPlace(ra)
		e.sc.rankInPlace(rb)
	}
	rho := math.Abs(pearson(ra, rb))
	// A job on a clock of twice the period (a timer every second, searched
	// at 500 ms) fills every other cycle: both ends alternate busy and
	// quiet cycles in step and carry no data. That strict alternation is
	// accounted for like another VMI.
	e.sc.alt = grow(e.sc.alt, nc)
	for k := range e.sc.alt {
		e.sc.alt[k] = float64(1 - 2*(k&1))
	}
	rho = min(rho, math.Abs(partialCorr(ra, rb, e.sc.alt)))
	W := e.cacheHorizon(res)
	from := max(B-W, a.first, b.first)
	e.sc.rest = grow(e.sc.rest, N)
	clear(e.sc.rest)
	e.sc.one = grow(e.sc.one, N)
	for _, v := range a.node.vmis {
		if v == a || v == b || v.last < B-W {
			continue
		}
		if isFine(res) {
			_, nat := e.llcRing(v, res)
			e.fineTrain(v, res, from, int(binNS/nat), e.sc.one)
		} else {
			e.coarseTrain(v, trace.LLCMisses, (from+e.coarseNS-1)/e.coarseNS, e.sc.one)
		}
		for i, x := range e.sc.one {
			e.sc.rest[i] += x
		}
		rho = e.factorOut(rho, ra, rb, e.sc.one, pb, off, ranks)
	}
	rho = e.factorOut(rho, ra, rb, e.sc.rest, pb, off, ranks)
	// Bus locks stall every VMI's memory accesses: a lock sender drives
	// the cache trains of all its neighbours at once.
	for _, v := range a.node.vmis {
		if v.last < B-W || e.meanLockRate(v, B, W) < e.cfg.BusLock.MinBurstRate/10 {
			continue
		}
		if isFine(res) {
			locks, lockNS := &v.locks, e.lockNS
			if isLong(res) {
				locks, lockNS = &v.locksLong, e.lockLongNS
			}
			if lockNS == 0 {
				continue
			}
			clear(e.sc.one)
			_, nat := e.llcRing(v, res)
			i0 := (from + nat - 1) / nat * nat
			for k := (i0 + lockNS - 1) / lockNS; k < B/lockNS; k++ {
				j := int((k*lockNS - i0) / binNS)
				if j >= 0 && j < N {
					e.sc.one[j] += float64(locks[0].get(k)) + float64(locks[1].get(k))
				}
			}
		} else {
			i0 := (from + e.coarseNS - 1) / e.coarseNS
			for j := range N {
				e.sc.one[j] = 0
				if bb := v.coarse.get(i0 + int64(j)); bb != nil {
					e.sc.one[j] = float64(max(bb.c[trace.BusLocks], bb.c[trace.SplitLocks]))
				}
			}
		}
		rho = e.factorOut(rho, ra, rb, e.sc.one, pb, off, ranks)
	}
	// Few cycles correlate by chance: require significance too.
	if t := rho * math.Sqrt(float64(nc-3)) / math.Sqrt(max(1e-9, 1-rho*rho)); t < 4 {
		rho = min(rho, cfg.MinAutocorrelation*0.99)
	}
	return rho
}

// factorOut lowers rho to the partial correlation of ra and rb (the two
// ends' cycle-to-cycle changes, ranked when ranks) given the same changes
// of train, the activity of another VMI or of the rest of the node.
func (e *Engine) factorOut(rho float64, ra, rb, train []float64, pb, off float64, ranks bool) float64 {
	nc := len(ra)
	e.sc.tmpl = cycleSums(train, pb, off, e.sc.tmpl)
	if len(e.sc.tmpl) <= nc {
		return rho
	}
	diff(e.sc.tmpl[:nc+1])
	if ranks {
		e.sc.rankInPlace(e.sc.tmpl[:nc])
	}
	return min(rho, math.Abs(partialCorr(ra, rb, e.sc.tmpl[:nc])))
}

// pairTrains builds both VMIs' trains at a common resolution into sc.x and
// sc.y.
func (e *Engine) pairTrains(a, b *vmi, res int, binNS, B int64) (x, y []float64, _, start int64) {
	W := e.cacheHorizon(res)
	from := max(B-W, a.first, b.first)
	if isFine(res) {
		_, nat := e.llcRing(a, res)
		factor := int(binNS / nat)
		i0 := (from + nat - 1) / nat
		N := int((B/nat - i0) / int64(factor))
		if N < 16 {
			return nil, nil, 0, 0
		}
		e.sc.x = grow(e.sc.x, N)
		e.sc.y = grow(e.sc.y, N)
		e.fineTrain(a, res, from, factor, e.sc.x)
		e.fineTrain(b, res, from, factor, e.sc.y)
		return e.sc.x, e.sc.y, binNS, i0 * nat
	}
	I := e.coarseNS
	i0 := (from + I - 1) / I
	N := int(B/I - i0)
	if N < 16 {
		return nil, nil, 0, 0
	}
	e.sc.x = grow(e.sc.x, N)
	e.sc.y = grow(e.sc.y, N)
	e.coarseTrain(a, trace.LLCMisses, i0, e.sc.x)
	e.coarseTrain(b, trace.LLCMisses, i0, e.sc.y)
	return e.sc.x, e.sc.y, I, i0 * I
}

// pairCovert judges whether two oscillating VMIs oscillate together: same
// period (or one twice the other: a bit clock and an alternating pattern)
// and trains that follow each other within half a period.
func (e *Engine) pairCovert(a, b *vmi, B int64) (covertPair, bool) {
	cfg := e.cfg.CacheOscillation
	best := covertPair{}
	// Hysteresis: a pair that showed a channel at the previous analysis
	// keeps it while each end oscillates at 80% of the threshold, so that
	// a sparse train wobbling around the threshold does not break the
	// run of evidence.
	minOsc := cfg.MinAutocorrelation
	pk := pairKey{a, b}
	if last, ok := e.pairSeen[pk]; ok && last == B-e.hopNS {
		minOsc *= 0.8
	}
	for ia := 0; ia < a.hop.n; ia++ {
		for ib := 0; ib < b.hop.n; ib++ {
			if p, ok := e.pairAt(a, b, a.hop.cands[ia], b.hop.cands[ib], minOsc, B); ok && p.score > best.score {
				best = p
			}
		}
	}
	if best.a != nil {
		e.pairSeen[pk] = B
	} else {
		delete(e.pairSeen, pk)
	}
	return best, best.a != nil
}

// pairAt judges a pair on one oscillation of each.
func (e *Engine) pairAt(a, b *vmi, oa, ob trainOsc, minOsc float64, B int64) (covertPair, bool) {
	cfg := e.cfg.CacheOscillation
	res := oa.res
	if oa.res != ob.res || oa.strength < minOsc || ob.strength < minOsc {
		return covertPair{}, false
	}
	bin := max(oa.binNS, ob.binNS)
	if !periodsMatch(oa.periodNS, ob.periodNS, bin) {
		return covertPair{}, false
	}
	period := min(oa.periodNS, ob.periodNS)
	x, y, binNS, _ := e.pairTrains(a, b, res, bin, B)
	if x == nil {
		return covertPair{}, false
	}
	L := max(1, min(len(x)/4, int(math.Ceil(0.5*period/float64(binNS)))))
	e.sc.r = grow(e.sc.r, 2*L+1)
	cc := e.sc.r
	e.sc.crossCorrelate(x, y, L, cc)
	rho, lag := 0.0, 0
	for t := -L; t <= L; t++ {
		if v := math.Abs(cc[L+t]); v > rho {
			rho, lag = v, t
		}
	}
	if debugf != nil {
		debugf("  pair %s %s res=%d rho=%.2f lag=%d period=%.1fms", a.ref, b.ref, res, rho, lag, period/1e6)
	}
	if rho < cfg.MinAutocorrelation {
		return covertPair{}, false
	}
	// Data coupling: two timers with the same period always line up
	// at some lag. A channel's receiver also follows the sender's data:
	// how much activity each cycle holds changes from cycle to cycle,
	// in step at both ends, and not because of the rest of the node
	// (co-runner interference moves every cache-sensitive VMI at once).
	pb := period / float64(binNS)
	offA, offB := 0.0, float64(lag)
	if lag < 0 {
		offA, offB = float64(-lag), 0
	}
	// Cut the cycles where both ends are quietest, so that a burst is
	// never split between two cycles (a slightly wrong period would
	// otherwise move the split from cycle to cycle, the same way at both
	// ends of two synchronised timers).
	cut := e.quietPhase(x, y, pb, offA, offB)
	offA += cut
	offB += cut
	e.sc.rx = cycleSums(x, pb, offA, e.sc.rx)
	e.sc.ry = cycleSums(y, pb, offB, e.sc.ry)
	dataRho := e.dataCoupling(a, b, res, binNS, B, len(x), pb, offA)
	if debugf != nil {
		debugf("    data rho=%.2f", dataRho)
	}
	if dataRho < cfg.MinAutocorrelation {
		return covertPair{}, false
	}
	score := math.Pow(min(1, oa.strength)*min(1, ob.strength)*min(1, rho)*min(1, dataRho), 0.25)
	return covertPair{a: a, b: b, oa: oa, ob: ob, res: res, score: score, rho: rho, dataRho: dataRho, lagBins: float64(lag), periodNS: period, binNS: binNS}, true
}

type pairKey struct{ a, b *vmi }

// followerMinData is the data coupling a VMI needs to pair with an
// oscillating one when its own train shows no clock: the sender's bit
// clock is established by the other end, so only a receiver that follows
// its data almost exactly is named.
const followerMinData = 0.8

// pairFollower judges a pair of an oscillating VMI a and a VMI f whose own
// train did not show an oscillation.
func (e *Engine) pairFollower(a, f *vmi, B int64) (covertPair, bool) {
	cfg := e.cfg.CacheOscillation
	// Only the strongest oscillation of a: each try costs a transform.
	k := -1
	for i := 0; i < a.hop.n; i++ {
		if a.hop.cands[i].strength >= cfg.MinAutocorrelation && (k < 0 || a.hop.cands[i].strength > a.hop.cands[k].strength) {
			k = i
		}
	}
	if k < 0 {
		return covertPair{}, false
	}
	oa := a.hop.cands[k]
	of := trainOsc{ok: true, res: oa.res, binNS: oa.binNS, periodNS: oa.periodNS}
	p, ok := e.pairAt(a, f, oa, of, 0, B)
	if !ok || p.dataRho < max(followerMinData, cfg.MinAutocorrelation) {
		return covertPair{}, false
	}
	p.score = math.Pow(min(1, oa.strength)*min(1, p.rho)*min(1, p.dataRho)*min(1, p.dataRho), 0.25)
	return p, true
}

// end is one participant of a covert channel.
type end struct {
	v     *vmi
	role  Role
	score float64
}

// chooseVictim applies the covert-channel victim rule: the protected
// participant is the victim; with several, the sender (its data is
// leaving), else the first by namespace/name.
func (e *Engine) chooseVictim(ends []end) (victim end, suspects []Suspect, ok bool) {
	vi := -1
	for i, x := range ends {
		if x.v.prot == nil {
			continue
		}
		if vi < 0 || x.role == RoleSender && ends[vi].role != RoleSender ||
			(x.role == RoleSender) == (ends[vi].role == RoleSender) && less(x.v.ref, ends[vi].v.ref) {
			vi = i
		}
	}
	if vi < 0 {
		e.stats.Unprotected++
		return end{}, nil, false
	}
	for i, x := range ends {
		if i != vi {
			suspects = append(suspects, Suspect{VMIRef: x.v.ref, Score: round3(x.score), Role: x.role})
		}
	}
	sort.SliceStable(suspects, func(i, j int) bool { return suspects[i].Score > suspects[j].Score })
	return ends[vi], suspects, true
}

func less(a, b VMIRef) bool {
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

func (e *Engine) emitCovert(n *node, B int64, p covertPair) {
	W := e.cfg.CacheOscillation.Window.Nanoseconds()
	// The span the evidence covers: the window, or the long horizon.
	span := e.cacheHorizon(p.res)
	roleA, roleB := RoleUnknown, RoleUnknown
	perBins := p.periodNS / float64(p.binNS)
	if math.Abs(p.lagBins) >= 1 && math.Abs(p.lagBins) < 0.45*perBins {
		if p.lagBins > 0 {
			roleA, roleB = RoleSender, RoleReceiver
		} else {
			roleA, roleB = RoleReceiver, RoleSender
		}
	}
	ends := []end{{p.a, roleA, p.score}, {p.b, roleB, p.score}}
	victim, suspects, ok := e.chooseVictim(ends)
	if !ok {
		return
	}
	other := p.b
	if victim.v == p.b {
		other = p.a
	}
	key := episodeKey{typ: v1alpha1.CacheCovertChannel, node: n.name, victim: victim.v.ref, other: other.ref}
	e.evidence(key, B, W, func() Detection {
		vo, oo := p.oa, p.ob
		if victim.v == p.b {
			vo, oo = p.ob, p.oa
		}
		lagNS := int64(p.lagBins * float64(p.binNS))
		if victim.v == p.b {
			lagNS = -lagNS
		}
		d := Detection{
			Type:       v1alpha1.CacheCovertChannel,
			Detector:   DetectorCacheOscillation,
			Node:       n.name,
			Victim:     victim.v.ref,
			VictimRole: victim.role,
			Suspects:   suspects,
			Score:      round3(p.score),
			Evidence: Evidence{
				WindowNS:            span,
				TrainBinNS:          p.binNS,
				PeriodNS:            int64(p.periodNS),
				BitsPerSecond:       round3(1e9 / p.periodNS),
				AutocorrelationPeak: round3(vo.autocorr),
				Oscillation:         round3(min(vo.strength, oo.strength)),
				Correlation:         round3(p.rho),
				LagNS:               lagNS,
				Samples:             vo.samples + oo.samples,
				EventRates:          e.eventRates(B, span, victim.v, other),
			},
		}
		d.Policy = victim.v.prot.Policy
		d.Series = e.covertSeries(B, p, victim.v, other)
		return d
	})
}

func (e *Engine) covertSeries(B int64, p covertPair, victim, other *vmi) *Series {
	s := &Series{}
	if len(victim.acCurve) > 0 {
		c := &Curve{Values: append([]float32(nil), victim.acCurve...)}
		for i := range c.Values {
			c.LagsNS = append(c.LagsNS, int64(i)*victim.acCurveLag)
		}
		s.Autocorrelation = c
		vo := p.oa
		if victim == p.b {
			vo = p.ob
		}
		lag := vo.acLagNS
		if lag <= 0 {
			lag = vo.periodNS
		}
		s.PeakLagNS = int64(lag)
	}
	x, y, binNS, start := e.pairTrains(victim, other, p.res, p.binNS, B)
	if x == nil {
		return s
	}
	L := max(1, min(len(x)/4, int(math.Ceil(0.5*p.periodNS/float64(binNS)))))
	cc := make([]float64, 2*L+1)
	xs := append([]float64(nil), x...)
	ys := append([]float64(nil), y...)
	e.sc.crossCorrelate(xs, ys, L, cc)
	step := max(1, (len(cc)+MaxSeriesPoints-1)/MaxSeriesPoints)
	curve := &Curve{}
	for i := 0; i < len(cc); i += step {
		curve.LagsNS = append(curve.LagsNS, int64(i-L)*binNS)
		curve.Values = append(curve.Values, float32(cc[i]))
	}
	s.CrossCorrelation = curve
	event := "sample.llc_misses"
	if !isFine(p.res) {
		event = "llc_misses"
	}
	s.Trains = append(s.Trains, downsampleTrain(victim.ref.String(), event, start, binNS, xs), downsampleTrain(other.ref.String(), event, start, binNS, ys))
	return s
}

// downsampleTrain turns counts per bin into a rate per second with at most
// MaxSeriesPoints points.
func downsampleTrain(vmi, event string, start, binNS int64, x []float64) Train {
	step := max(1, (len(x)+MaxSeriesPoints-1)/MaxSeriesPoints)
	t := Train{VMI: vmi, Event: event, StartNS: start, StepNS: binNS * int64(step)}
	for i := 0; i < len(x); i += step {
		var s float64
		n := 0
		for k := i; k < min(len(x), i+step); k++ {
			s += x[k]
			n++
		}
		t.Values = append(t.Values, float32(s/float64(n)*1e9/float64(binNS)))
	}
	return t
}

// eventRates reports the mean counter rates of the given VMIs over the
// window ending at B.
func (e *Engine) eventRates(B, W int64, vs ...*vmi) []EventRate {
	var out []EventRate
	I := e.coarseNS
	for _, v := range vs {
		i0 := (max(B-W, v.first) + I - 1) / I
		i1 := B / I
		if i1 <= i0 {
			continue
		}
		for _, c := range [...]trace.Event{trace.LLCReferences, trace.LLCMisses, trace.BusLocks, trace.SplitLocks, trace.Instructions} {
			var sum float64
			has := false
			for i := i0; i < i1; i++ {
				if b := v.coarse.get(i); b != nil {
					sum += float64(b.c[c])
					has = has || b.has&(1<<c) != 0
				}
			}
			if has {
				out = append(out, EventRate{VMI: v.ref.String(), Event: c.String(), PerSecond: math.Round(sum / (float64((i1-i0)*I) / 1e9))})
			}
		}
	}
	return out
}
