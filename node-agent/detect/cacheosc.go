package detect

import (
	"math"
	"sort"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// hopState is one VMI's findings of the current analysis.
type hopState struct {
	osc [2]trainOsc // [fine, coarse]
}

const (
	resFine   = 0
	resCoarse = 1
)

// minSamplesPerFineBin is the mean number of LLC-miss samples a fine bin
// must hold: fewer and the train is Poisson noise.
const minSamplesPerFineBin = 4

// fineTrain fills x with v's LLC-miss sample counts over [from, to) in
// bins of factor native fine bins.
func (e *Engine) fineTrain(v *vmi, from, to int64, factor int, x []float64) int64 {
	i0 := (from + e.fineNS - 1) / e.fineNS
	return v.llc.sum(i0, i0+int64(len(x)*factor), factor, x)
}

func (e *Engine) fineOsc(v *vmi, from, to int64) trainOsc {
	cfg := e.cfg.CacheOscillation
	i0, i1 := (from+e.fineNS-1)/e.fineNS, to/e.fineNS
	nat := int(i1 - i0)
	if nat < 64 {
		return trainOsc{}
	}
	var S int64
	for i := i0; i < i1; i++ {
		S += int64(v.llc.get(i))
	}
	if S < 64 {
		return trainOsc{}
	}
	factor := max(1, int(math.Ceil(float64(minSamplesPerFineBin*nat)/float64(S))))
	for nat/factor > e.cfg.MaxFineBins {
		factor++
	}
	N := nat / factor
	binNS := int64(factor) * e.fineNS
	minLag := max(4, float64(cfg.MinPeriod.Nanoseconds())/float64(binNS))
	maxLag := min(float64(cfg.MaxPeriod.Nanoseconds())/float64(binNS), float64(N)/float64(cfg.MinRepetitions))
	if N < 32 || maxLag < minLag {
		return trainOsc{}
	}
	e.sc.x = grow(e.sc.x, N)
	samples := e.fineTrain(v, from, to, factor, e.sc.x)
	res, r := e.sc.analyseTrain(e.sc.x, minLag, maxLag)
	if !res.ok {
		return trainOsc{}
	}
	res.binNS = binNS
	res.startNS = i0 * e.fineNS
	res.samples = samples
	res.periodNS *= float64(binNS)
	res.acLagNS *= float64(binNS)
	e.keepCurve(v, r, res)
	return res
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

func (e *Engine) coarseOsc(v *vmi, from, to int64) trainOsc {
	cfg := e.cfg.CacheOscillation
	I := e.coarseNS
	i0, i1 := (from+I-1)/I, to/I
	N := int(i1 - i0)
	minLag := max(4, float64(cfg.MinPeriod.Nanoseconds())/float64(I))
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
	res      int
	score    float64
	rho      float64
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
			v.hop.osc[resFine] = e.fineOsc(v, from, B)
		}
		v.hop.osc[resCoarse] = e.coarseOsc(v, from, B)
		if v.hop.osc[resFine].strength >= cfg.MinAutocorrelation || v.hop.osc[resCoarse].strength >= cfg.MinAutocorrelation {
			cands = append(cands, v)
		}
	}
	e.sc.cand = cands
	if len(cands) < 2 {
		return
	}
	var pairs []covertPair
	for i := 0; i < len(cands); i++ {
		for j := i + 1; j < len(cands); j++ {
			if p, ok := e.pairCovert(cands[i], cands[j], B); ok {
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
		e.emitCovert(n, B, p)
	}
}

// pairTrains builds both VMIs' trains at a common resolution into sc.x and
// sc.y.
func (e *Engine) pairTrains(a, b *vmi, res int, B int64) (x, y []float64, binNS, start int64) {
	W := e.cfg.CacheOscillation.Window.Nanoseconds()
	from := max(B-W, a.first, b.first)
	if res == resFine {
		binNS = max(a.hop.osc[resFine].binNS, b.hop.osc[resFine].binNS)
		factor := int(binNS / e.fineNS)
		i0 := (from + e.fineNS - 1) / e.fineNS
		N := int((B/e.fineNS - i0) / int64(factor))
		if N < 16 {
			return nil, nil, 0, 0
		}
		e.sc.x = grow(e.sc.x, N)
		e.sc.y = grow(e.sc.y, N)
		e.fineTrain(a, from, B, factor, e.sc.x)
		e.fineTrain(b, from, B, factor, e.sc.y)
		return e.sc.x, e.sc.y, binNS, i0 * e.fineNS
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
	for _, res := range [...]int{resFine, resCoarse} {
		oa, ob := a.hop.osc[res], b.hop.osc[res]
		if !oa.ok || !ob.ok || oa.strength < cfg.MinAutocorrelation || ob.strength < cfg.MinAutocorrelation {
			continue
		}
		bin := max(oa.binNS, ob.binNS)
		if !periodsMatch(oa.periodNS, ob.periodNS, bin) {
			continue
		}
		period := min(oa.periodNS, ob.periodNS)
		x, y, binNS, _ := e.pairTrains(a, b, res, B)
		if x == nil {
			continue
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
		if rho < cfg.MinAutocorrelation {
			continue
		}
		score := math.Cbrt(min(1, oa.strength) * min(1, ob.strength) * min(1, rho))
		if score > best.score {
			best = covertPair{a: a, b: b, res: res, score: score, rho: rho, lagBins: float64(lag), periodNS: period, binNS: binNS}
		}
	}
	return best, best.a != nil
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
		vo, oo := victim.v.hop.osc[p.res], other.hop.osc[p.res]
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
				WindowNS:            W,
				TrainBinNS:          p.binNS,
				PeriodNS:            int64(p.periodNS),
				BitsPerSecond:       round3(1e9 / p.periodNS),
				AutocorrelationPeak: round3(vo.autocorr),
				Oscillation:         round3(min(vo.strength, oo.strength)),
				Correlation:         round3(p.rho),
				LagNS:               lagNS,
				Samples:             vo.samples + oo.samples,
				EventRates:          e.eventRates(B, W, victim.v, other),
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
		lag := victim.hop.osc[p.res].acLagNS
		if lag <= 0 {
			lag = victim.hop.osc[p.res].periodNS
		}
		s.PeakLagNS = int64(lag)
	}
	x, y, binNS, start := e.pairTrains(victim, other, p.res, B)
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
	if p.res == resCoarse {
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
