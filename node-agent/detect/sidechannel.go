package detect

import (
	"math"
	"sort"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// The baseline is a decaying histogram of one VMI's cache feature per
// interval (see cacheFeature), from which a robust location (median) and
// scale (MAD) are read. Its memory is fixed.
const (
	baselineBins = 512
	baselineLo   = -8.0
	baselineHi   = 24.0
	baselineRes  = (baselineHi - baselineLo) / baselineBins
	// baselineWarm is the weight (intervals) a baseline needs before it
	// is trusted; until then the window's own quiet intervals stand in.
	baselineWarm = 200
	// minScale floors the robust scale: a perfectly steady VMI would
	// otherwise turn any wobble into an anomaly.
	minScale = 0.05
)

type baseline struct {
	w     [baselineBins]float32
	total float64
	mode  int8 // 0 unset, 1 per kilo-instruction, 2 per interval
}

func (b *baseline) add(x float64) {
	i := int((x - baselineLo) / baselineRes)
	i = max(0, min(baselineBins-1, i))
	b.w[i]++
	b.total++
}

func (b *baseline) decay(f float64) {
	if b.total == 0 {
		return
	}
	for i := range b.w {
		b.w[i] *= float32(f)
	}
	b.total *= f
}

// stats returns the median and the robust scale (1.4826 MAD).
func (b *baseline) stats() (med, scale float64) {
	half := b.total / 2
	var acc float64
	mi := 0
	for i, w := range b.w {
		acc += float64(w)
		if acc >= half {
			mi = i
			break
		}
	}
	med = baselineLo + (float64(mi)+0.5)*baselineRes
	// MAD: widen a band around the median bin until it holds half the
	// weight.
	acc = float64(b.w[mi])
	r := 0
	for acc < half && r < baselineBins {
		r++
		if mi-r >= 0 {
			acc += float64(b.w[mi-r])
		}
		if mi+r < baselineBins {
			acc += float64(b.w[mi+r])
		}
	}
	return med, max(minScale, 1.4826*float64(r)*baselineRes)
}

// cacheFeature is a VMI's cache behaviour in one interval: log LLC misses
// per kilo-instruction when instructions are counted (so that doing more
// of the same work is not an anomaly, only missing more per unit of work
// is), else log LLC misses per interval.
func cacheFeature(b *coarseBin, mode int8) (float64, bool) {
	if b == nil || b.has&(1<<trace.LLCMisses) == 0 {
		return 0, false
	}
	m := float64(b.c[trace.LLCMisses])
	if mode == 1 {
		ins := float64(b.c[trace.Instructions])
		if b.has&(1<<trace.Instructions) == 0 || ins <= 0 {
			return 0, false
		}
		return math.Log((m + 1) / (ins/1000 + 1)), true
	}
	return math.Log(m + 1), true
}

// feedBaseline adds v's completed intervals up to B to its baseline.
func (e *Engine) feedBaseline(v *vmi, B int64) {
	I := e.coarseNS
	end := B / I
	start := v.baseFedTo
	if start == noIndex || start < end-int64(len(v.coarse.bins))+2 {
		start = max(0, end-int64(len(v.coarse.bins))+2)
	}
	tau := float64(e.cfg.SideChannel.BaselineWindow.Nanoseconds()) / float64(I)
	v.base.decay(math.Exp(-float64(end-start) / tau))
	for i := start; i < end; i++ {
		b := v.coarse.get(i)
		if b == nil {
			continue
		}
		if v.base.mode == 0 && b.has&(1<<trace.LLCMisses) != 0 {
			v.base.mode = 2
			if b.has&(1<<trace.Instructions) != 0 {
				v.base.mode = 1
			}
		}
		if x, ok := cacheFeature(b, v.base.mode); ok {
			v.base.add(x)
		}
	}
	v.baseFedTo = end
}

// sensitivePhase reports whether victim v ran sensitive code in interval b,
// and under which signature.
func (e *Engine) sensitivePhase(v *vmi, b *coarseBin) (bool, int) {
	if b == nil {
		return false, -1
	}
	if b.sensitive > 0 && float64(b.sensitive) >= e.cfg.SideChannel.MinSensitiveFraction*float64(b.samples) {
		return true, int(b.sig)
	}
	for si, idx := range v.profIdx {
		if idx == nil {
			continue
		}
		var c IntervalCounters
		for k := trace.Event(1); k <= trace.NumCounters; k++ {
			if b.has&(1<<k) != 0 {
				c[k] = float64(b.c[k])
			}
		}
		if v.prot.Signatures[si].Profile.matches(&c, idx) {
			return true, si
		}
	}
	return false, -1
}

type sideSuspect struct {
	u     *vmi
	corr  float64
	dz    float64
	score float64
}

func (e *Engine) detectSideChannel(n *node, B int64) {
	cfg := e.cfg.SideChannel
	W := cfg.Window.Nanoseconds()
	I := e.coarseNS
	i1 := B / I
	N := int(W / I)
	i0 := i1 - int64(N)
	s := make([]float64, 0, N)
	sigCount := map[int]int{}
	for _, v := range n.vmis {
		if v.prot == nil || v.first < 0 || v.last < B-W/2 || v.first > i0*I+W/2 {
			continue
		}
		s = s[:0]
		clear(sigCount)
		sens, runs := 0, 0
		prev := false
		var samples int64
		for i := i0; i < i1; i++ {
			b := v.coarse.get(i)
			ok, sig := e.sensitivePhase(v, b)
			if b != nil {
				samples += int64(b.samples)
			}
			if ok {
				sens++
				sigCount[sig]++
				if !prev {
					runs++
				}
				s = append(s, 1)
			} else {
				s = append(s, 0)
			}
			prev = ok
		}
		if sens < 3 || N-sens < 3 || runs < 2 {
			continue
		}
		var suspects []sideSuspect
		for _, u := range n.vmis {
			if u == v || u.last < B-W/2 {
				continue
			}
			if sp, ok := e.judgeSuspect(u, s, i0); ok {
				suspects = append(suspects, sp)
			}
		}
		if len(suspects) == 0 {
			continue
		}
		sort.Slice(suspects, func(i, j int) bool { return suspects[i].score > suspects[j].score })
		bestSig, bestN := -1, 0
		for k, c := range sigCount {
			if c > bestN || c == bestN && k < bestSig {
				bestSig, bestN = k, c
			}
		}
		e.emitSide(n, B, v, suspects, append([]float64(nil), s...), i0, sens, samples, bestSig)
	}
	for _, v := range n.vmis {
		e.feedBaseline(v, B)
	}
}

// judgeSuspect scores how u's cache feature follows the victim's sensitive
// phases s (from interval i0).
func (e *Engine) judgeSuspect(u *vmi, s []float64, i0 int64) (sideSuspect, bool) {
	cfg := e.cfg.SideChannel
	mode := u.base.mode
	if mode == 0 {
		mode = 2
		if b := u.coarse.get(i0 + int64(len(s)) - 1); b != nil && b.has&(1<<trace.Instructions) != 0 {
			mode = 1
		}
	}
	xs := make([]float64, 0, len(s))
	ss := make([]float64, 0, len(s))
	own := make([]float64, 0, len(s))
	ownAny := false
	quiet := make([]float64, 0, len(s))
	for j := range s {
		b := u.coarse.get(i0 + int64(j))
		x, ok := cacheFeature(b, mode)
		if !ok {
			continue
		}
		xs = append(xs, x)
		ss = append(ss, s[j])
		// The suspect's own sensitive phases (known when it is protected
		// too): a VMI running crypto itself changes its cache behaviour with
		// its own phases, not the victim's.
		o := 0.0
		if b.sensitive > 0 && float64(b.sensitive) >= cfg.MinSensitiveFraction*float64(b.samples) {
			o = 1
			ownAny = true
		}
		own = append(own, o)
		if s[j] == 0 {
			quiet = append(quiet, x)
		}
	}
	if len(xs) < len(s)*7/10 || len(quiet) < 3 || len(quiet) == len(xs) {
		return sideSuspect{}, false
	}
	var med, scale float64
	if u.base.total >= baselineWarm {
		med, scale = u.base.stats()
	} else {
		med = quantile(quiet, 0.5)
		for i := range quiet {
			quiet[i] = math.Abs(quiet[i] - med)
		}
		scale = max(minScale, 1.4826*quantile(quiet, 0.5))
	}
	var zs, zq float64
	ns, nq := 0, 0
	for i := range xs {
		xs[i] = (xs[i] - med) / scale
		if ss[i] > 0 {
			zs += xs[i]
			ns++
		} else {
			zq += xs[i]
			nq++
		}
	}
	if ns < 3 || nq < 3 {
		return sideSuspect{}, false
	}
	dz := zs/float64(ns) - zq/float64(nq)
	corr := pearson(ss, xs)
	if ownAny {
		// What the suspect's own sensitive phases explain does not count.
		corr = partialCorr(ss, xs, own)
	}
	if math.Abs(corr) < cfg.MinCorrelation || math.Abs(dz) < cfg.AnomalyThreshold || corr*dz < 0 {
		return sideSuspect{}, false
	}
	// Prime+Probe and Flush+Reload work on every run of the victim's
	// sensitive code, so the suspect's shift shows in (nearly) every
	// sensitive phase; a neighbour's own bursts (garbage collections,
	// checkpoints) that happen to coincide with some phases shift only
	// those, however large the shift and the correlation they carry.
	runs, hits := 0, 0
	qm := zq / float64(nq)
	for i := 0; i < len(xs); {
		if ss[i] == 0 {
			i++
			continue
		}
		var sum float64
		k := 0
		for ; i < len(xs) && ss[i] > 0; i++ {
			sum += xs[i]
			k++
		}
		runs++
		if math.Copysign(1, dz)*(sum/float64(k)-qm) >= cfg.AnomalyThreshold/2 {
			hits++
		}
	}
	if debugf != nil {
		debugf("  side suspect %s corr=%.2f dz=%.2f runs=%d hits=%d", u.ref, corr, dz, runs, hits)
	}
	if 4*hits < 3*runs {
		return sideSuspect{}, false
	}
	score := math.Sqrt(math.Abs(corr) * (1 - math.Exp(-math.Abs(dz)/cfg.AnomalyThreshold)))
	return sideSuspect{u: u, corr: corr, dz: dz, score: score}, true
}

func (e *Engine) emitSide(n *node, B int64, v *vmi, sus []sideSuspect, s []float64, i0 int64, sens int, samples int64, sig int) {
	W := e.cfg.SideChannel.Window.Nanoseconds()
	key := episodeKey{typ: v1alpha1.CacheSideChannel, node: n.name, victim: v.ref}
	e.evidence(key, B, W, func() Detection {
		I := e.coarseNS
		top := sus[0]
		d := Detection{
			Type:     v1alpha1.CacheSideChannel,
			Detector: DetectorCryptoCorrelation,
			Node:     n.name,
			Victim:   v.ref,
			Policy:   v.prot.Policy,
			Score:    round3(top.score),
			Evidence: Evidence{
				WindowNS:          W,
				TrainBinNS:        I,
				Correlation:       round3(top.corr),
				AnomalyScore:      round3(top.dz),
				SensitiveFraction: round3(float64(sens) / float64(len(s))),
				Samples:           samples,
			},
		}
		if sig >= 0 && sig < len(v.prot.Signatures) {
			d.Evidence.Signature = v.prot.Signatures[sig].Name
		}
		vs := []*vmi{v}
		for i, x := range sus {
			if i >= 16 {
				break
			}
			d.Suspects = append(d.Suspects, Suspect{VMIRef: x.u.ref, Score: round3(x.score), Role: RoleAttacker})
			vs = append(vs, x.u)
		}
		d.Evidence.EventRates = e.eventRates(B, W, vs...)
		ser := &Series{}
		sens32 := Train{VMI: v.ref.String(), Event: "sensitive", StartNS: i0 * I, StepNS: I}
		for _, x := range s {
			sens32.Values = append(sens32.Values, float32(x))
		}
		ser.Sensitive = &sens32
		mode := top.u.base.mode
		med, scale := top.u.base.stats()
		an := Train{VMI: top.u.ref.String(), Event: "anomaly", StartNS: i0 * I, StepNS: I}
		for j := range s {
			x, ok := cacheFeature(top.u.coarse.get(i0+int64(j)), mode)
			if !ok {
				an.Values = append(an.Values, 0)
				continue
			}
			an.Values = append(an.Values, float32((x-med)/scale))
		}
		ser.Anomaly = &an
		for _, x := range []*vmi{v, top.u} {
			tr := make([]float64, len(s))
			e.coarseTrain(x, trace.LLCMisses, i0, tr)
			ser.Trains = append(ser.Trains, downsampleTrain(x.ref.String(), "llc_misses", i0*I, I, tr))
		}
		d.Series = ser
		return d
	})
}
