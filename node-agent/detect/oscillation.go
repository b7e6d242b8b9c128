package detect

import (
	"cmp"
	"math"
	"math/cmplx"
	"slices"
)

// scratch holds the buffers analyses reuse, so that steady-state analysis
// does not allocate.
type scratch struct {
	f         fft
	z         []complex128
	x         []float64
	y         []float64
	d         []float64
	tmp       []float64
	px        []float64
	ad        []float64
	r         []float64
	rx        []float64
	ry        []float64
	tmpl      []float64
	rest      []float64
	one       []float64
	fine      []float64
	fold      []float64
	cand      []*vmi
	followers []*vmi
	alt       []float64
	idx       []int
	rk        []float64
}

// rankInPlace replaces x by its ranks (0-based, ties averaged).
func (sc *scratch) rankInPlace(x []float64) {
	n := len(x)
	sc.idx = grow(sc.idx, n)
	sc.rk = grow(sc.rk, n)
	for i := range sc.idx {
		sc.idx[i] = i
	}
	slices.SortFunc(sc.idx, func(a, b int) int { return cmp.Compare(x[a], x[b]) })
	for i := 0; i < n; {
		j := i
		for j+1 < n && x[sc.idx[j+1]] == x[sc.idx[i]] {
			j++
		}
		for k := i; k <= j; k++ {
			sc.rk[sc.idx[k]] = float64(i+j) / 2
		}
		i = j + 1
	}
	copy(x, sc.rk)
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// trainOsc is what analyseTrain found in one event train.
type trainOsc struct {
	ok       bool
	res      int // resFine or resCoarse
	binNS    int64
	startNS  int64
	nbins    int
	periodNS float64
	// strength = max(autocorr, clock).
	strength float64
	autocorr float64 // normalised autocorrelation peak
	acLagNS  float64
	clock    float64 // phase coherence of transitions on the period
	samples  int64
}

// analyseTrain looks for the dominant oscillation of x with a period
// between minLag and maxLag bins. Two measures are combined:
//
//   - the normalised (mean-removed, unbiased) autocorrelation: a periodic
//     train correlates with itself one period later (CC-Hunter);
//   - the phase coherence of the train's transitions: a channel changes
//     state only on its bit clock, so its rising and falling edges line up
//     on a grid of the bit period even when the data bits are random and
//     the autocorrelation shows no peak (NRZ coding). Coherence is
//     |Σ d_i e^{-2πi·i/P}| / Σ d_i over the edge train d (edges below the
//     train's own noise are discarded first), computed both for unsigned
//     edges (any edge is on the clock) and signed ones (up and down edges
//     at fixed phases, as in return-to-zero coding).
//
// curve, when not nil, receives the autocorrelation at lags 0..len(curve)
// spread to cover about three periods.
func (sc *scratch) analyseTrain(x []float64, minLag, maxLag float64) (res trainOsc, r []float64) {
	N := len(x)
	kmin := int(math.Ceil(minLag))
	kmax := int(math.Floor(maxLag))
	if N < 16 || kmax < kmin || kmin < 2 {
		return res, nil
	}
	var mean float64
	for _, v := range x {
		mean += v
	}
	mean /= float64(N)
	var var0 float64
	for _, v := range x {
		var0 += (v - mean) * (v - mean)
	}
	var0 /= float64(N)
	if var0 <= 1e-12*(1+mean*mean) {
		return res, nil
	}
	// Edge train with a noise threshold from the lower quartile of the
	// edge sizes (most bins of a clocked train have no edge).
	sc.d = grow(sc.d, N)
	sc.tmp = grow(sc.tmp, N)
	var sumAbs float64
	sc.d[0] = 0
	sc.tmp[0] = 0
	for i := 1; i < N; i++ {
		a := math.Abs(x[i] - x[i-1])
		sc.d[i] = a
		sc.tmp[i] = a
		sumAbs += a
	}
	q := quantile(sc.tmp[1:], 0.25)
	thr := 2.5 * q / 0.3186
	var sumD, sumD2 float64
	for i := range N {
		v := sc.d[i] - thr
		if v < 0 {
			v = 0
		}
		sc.d[i] = v
		sumD += v
		sumD2 += v * v
	}
	// Effective number of edges (participation ratio): a handful of edges
	// fits some clock by chance, so coherence is debiased by the level
	// noise reaches when searching that many frequencies.
	nEdges := 0.0
	if sumD2 > 0 {
		nEdges = sumD * sumD / sumD2
	}
	M := nextPow2(2 * N)
	sc.z = grow(sc.z, M)
	for i := range N {
		sc.z[i] = complex(x[i]-mean, sc.d[i])
	}
	clear(sc.z[N:])
	sc.f.transform(sc.z, false)
	half := M / 2
	sc.px = grow(sc.px, half+1)
	sc.ad = grow(sc.ad, half+1)
	for k := 0; k <= half; k++ {
		zk := sc.z[k]
		zm := cmplx.Conj(sc.z[(M-k)%M])
		X := (zk + zm) * 0.5
		q := zk - zm // D = q / 2i
		sc.px[k] = real(X)*real(X) + imag(X)*imag(X)
		sc.ad[k] = 0.5 * math.Hypot(real(q), imag(q))
	}
	// Autocorrelation: inverse transform of the power spectrum.
	for k := 0; k <= half; k++ {
		sc.z[k] = complex(sc.px[k], 0)
		if k > 0 && k < half {
			sc.z[M-k] = sc.z[k]
		}
	}
	sc.f.transform(sc.z, true)
	lim := min(N-1, 4*kmax+2)
	sc.r = grow(sc.r, lim+1)
	for k := 0; k <= lim; k++ {
		sc.r[k] = real(sc.z[k]) / float64(M) / float64(N-k) / var0
	}
	r = sc.r
	// Autocorrelation peak: the shortest prominent local maximum within
	// 90% of the highest.
	best := 0.0
	runMin := r[1]
	for k := 2; k <= kmin; k++ {
		runMin = min(runMin, r[k-1])
	}
	type peak struct {
		k int
		v float64
	}
	var peaks [64]peak
	np := 0
	for k := kmin; k <= kmax && k+1 <= lim; k++ {
		runMin = min(runMin, r[k])
		if r[k] >= r[k-1] && r[k] >= r[k+1] && r[k]-runMin >= 0.1 && r[k] > 0 {
			if np < len(peaks) {
				peaks[np] = peak{k, r[k]}
				np++
			}
			best = max(best, r[k])
		}
	}
	acLag := 0.0
	for i := range np {
		if peaks[i].v >= 0.9*best {
			k := peaks[i].k
			acLag = float64(k) + parabola(r[k-1], r[k], r[k+1])
			res.autocorr = peaks[i].v
			break
		}
	}
	// Clock: coherence of edges at frequency q/M cycles per bin.
	qmin := int(math.Ceil(float64(M) / maxLag))
	qmax := min(half, int(math.Floor(float64(M)/minLag)))
	coh := func(q int) float64 {
		var c float64
		if sumD > 0 {
			c = sc.ad[q] / sumD
		}
		if sumAbs > 0 {
			c = max(c, math.Sqrt(sc.px[q])*2*math.Abs(math.Sin(math.Pi*float64(q)/float64(M)))/sumAbs)
		}
		return c
	}
	cmax := 0.0
	for q := qmin; q <= qmax; q++ {
		cmax = max(cmax, coh(q))
	}
	clockQ := 0.0
	if cmax > 0 {
		for q := qmin; q <= qmax; q++ {
			c := coh(q)
			if c >= 0.9*cmax && (q == qmin || c >= coh(q-1)) && (q == qmax || c >= coh(q+1)) {
				// Refine between grid points with the exact transform.
				bestF, bestC := float64(q), 0.0
				for _, dq := range [...]float64{-0.5, -0.25, 0, 0.25, 0.5} {
					f := float64(q) + dq
					if cc := sc.coherenceAt(x, mean, f/float64(M), sumD, sumAbs); cc > bestC {
						bestF, bestC = f, cc
					}
				}
				clockQ = bestF
				res.clock = debias(min(1, bestC), nEdges, float64(qmax-qmin+1))
				break
			}
		}
	}
	switch {
	case res.clock >= res.autocorr && clockQ > 0:
		res.periodNS = float64(M) / clockQ
		res.strength = res.clock
	case acLag > 0:
		res.periodNS = acLag
		res.strength = res.autocorr
	default:
		return res, r
	}
	res.acLagNS = acLag // in bins until the caller scales
	res.nbins = N
	res.ok = true
	return res, r
}

// debias removes from a coherence R measured over n edges the level that
// the best of f frequencies reaches on random edges (R² ≈ ln f / n):
// sqrt((R² - b) / (1 - b)), 0 when R is no better than chance.
func debias(R, n, f float64) float64 {
	if n <= 1 {
		return 0
	}
	b := math.Log(max(f, 2)) / n
	if b >= 1 {
		return 0
	}
	return math.Sqrt(max(0, (R*R-b)/(1-b)))
}

// cycleSums sums x over consecutive cycles of p bins starting at bin off
// (fractional bins are split), into out.
func cycleSums(x []float64, p, off float64, out []float64) []float64 {
	out = out[:0]
	for k := 0; ; k++ {
		lo := off + float64(k)*p
		hi := lo + p
		if hi > float64(len(x)) {
			break
		}
		if lo < 0 {
			continue
		}
		var s float64
		i0, i1 := int(lo), int(hi)
		if i0 == i1 {
			s = x[i0] * (hi - lo)
		} else {
			s = x[i0] * (float64(i0+1) - lo)
			for i := i0 + 1; i < i1; i++ {
				s += x[i]
			}
			if i1 < len(x) {
				s += x[i1] * (hi - float64(i1))
			}
		}
		out = append(out, s)
	}
	return out
}

// partialCorr is the correlation of a and b once c is accounted for.
func partialCorr(a, b, c []float64) float64 {
	ab, ac, bc := pearson(a, b), pearson(a, c), pearson(b, c)
	den := math.Sqrt((1 - ac*ac) * (1 - bc*bc))
	if den < 1e-6 {
		return 0
	}
	return (ab - ac*bc) / den
}

// coherenceAt evaluates the edge coherence at frequency f (cycles per bin)
// exactly.
func (sc *scratch) coherenceAt(x []float64, mean, f, sumD, sumAbs float64) float64 {
	var dr, di, xr, xi float64
	// Rotate a phasor instead of calling Sincos per bin; renormalise
	// now and then against rounding drift.
	ws, wc := math.Sincos(-2 * math.Pi * f)
	c, s := 1.0, 0.0
	for i := range x {
		dr += sc.d[i] * c
		di += sc.d[i] * s
		v := x[i] - mean
		xr += v * c
		xi += v * s
		c, s = c*wc-s*ws, c*ws+s*wc
		if i&1023 == 1023 {
			m := 1 / math.Hypot(c, s)
			c, s = c*m, s*m
		}
	}
	var out float64
	if sumD > 0 {
		out = math.Hypot(dr, di) / sumD
	}
	if sumAbs > 0 {
		out = max(out, math.Hypot(xr, xi)*2*math.Abs(math.Sin(math.Pi*f))/sumAbs)
	}
	return out
}

// parabola returns the offset (-0.5..0.5) of the vertex of the parabola
// through three equally spaced points.
func parabola(a, b, c float64) float64 {
	den := a - 2*b + c
	if den == 0 {
		return 0
	}
	return max(-0.5, min(0.5, 0.5*(a-c)/den))
}

// quantile returns the q-quantile of v, reordering v.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	k := int(q * float64(len(v)-1))
	return quickselect(v, k)
}

func quickselect(v []float64, k int) float64 {
	lo, hi := 0, len(v)-1
	for lo < hi {
		p := v[(lo+hi)/2]
		i, j := lo, hi
		for i <= j {
			for v[i] < p {
				i++
			}
			for v[j] > p {
				j--
			}
			if i <= j {
				v[i], v[j] = v[j], v[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return v[k]
		}
	}
	return v[k]
}

// crossCorrelate returns the normalised cross-correlation of a and b
// (same length) at lags -L..L, in out[L+τ] = corr(a[i], b[i+τ]): a peak at
// τ > 0 means b follows a by τ bins.
func (sc *scratch) crossCorrelate(a, b []float64, L int, out []float64) {
	N := len(a)
	ma, mb := meanOf(a), meanOf(b)
	var va, vb float64
	for i := range N {
		va += (a[i] - ma) * (a[i] - ma)
		vb += (b[i] - mb) * (b[i] - mb)
	}
	clear(out)
	if va <= 0 || vb <= 0 {
		return
	}
	M := nextPow2(2 * N)
	sc.z = grow(sc.z, M)
	for i := range N {
		sc.z[i] = complex(a[i]-ma, b[i]-mb)
	}
	clear(sc.z[N:])
	sc.f.transform(sc.z, false)
	half := M / 2
	// S = conj(A)·B, whose inverse is Σ a[i] b[i+τ].
	for k := 0; k <= half; k++ {
		zk := sc.z[k]
		zm := cmplx.Conj(sc.z[(M-k)%M])
		A := (zk + zm) * 0.5
		q := zk - zm
		B := complex(0.5*imag(q), -0.5*real(q))
		sc.z[k] = cmplx.Conj(A) * B
	}
	// The cross-spectrum of two real sequences is Hermitian, so the
	// inverse is real.
	for k := 1; k < half; k++ {
		sc.z[M-k] = cmplx.Conj(sc.z[k])
	}
	sc.f.transform(sc.z, true)
	norm := math.Sqrt(va*vb) / float64(N)
	for tau := -L; tau <= L; tau++ {
		idx := tau
		if idx < 0 {
			idx += M
		}
		n := N - abs(tau)
		if n <= 0 {
			continue
		}
		out[L+tau] = real(sc.z[idx]) / float64(M) / float64(n) / norm
	}
}

func meanOf(x []float64) float64 {
	if len(x) == 0 {
		return 0
	}
	var s float64
	for _, v := range x {
		s += v
	}
	return s / float64(len(x))
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

func pearson(a, b []float64) float64 {
	ma, mb := meanOf(a), meanOf(b)
	var sab, saa, sbb float64
	for i := range a {
		x, y := a[i]-ma, b[i]-mb
		sab += x * y
		saa += x * x
		sbb += y * y
	}
	if saa <= 0 || sbb <= 0 {
		return 0
	}
	return sab / math.Sqrt(saa*sbb)
}
