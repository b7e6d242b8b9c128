package tracegen

import (
	"math"
	"math/rand/v2"
)

// load is what a VMI does during one tick.
type load struct {
	busy  float64 // busy vCPUs
	ipc   float64 // instructions per cycle, before interference
	mpki  float64 // LLC misses per kilo-instruction, before interference
	rpki  float64 // LLC references per kilo-instruction
	l1pki float64 // L1D misses per kilo-instruction
	// Absolute rates (per second) that do not scale with instructions:
	// a covert channel's evictions, a probe loop's misses, lock bursts.
	missRate float64
	refRate  float64
	locks    float64
	// sens is the share of the VMI's samples in sensitive code.
	sens float64
	// memSens: how much co-runners' LLC pressure raises this VMI's misses
	// and lowers its IPC (0 = cache-insensitive). memBound: how much bus
	// locks on the node stall it.
	memSens  float64
	memBound float64
}

// Workload is a VMI's behaviour over time. at is called with
// non-decreasing t (seconds).
type workload interface {
	at(t float64) load
}

// Kind names a workload in scenarios.
type Kind string

// Workload kinds.
const (
	Idle           Kind = "idle"
	Compiler       Kind = "compiler"
	Database       Kind = "database"
	VideoEncoder   Kind = "video-encoder"
	MemBandwidth   Kind = "memory-bandwidth"
	TrainingLoop   Kind = "training-loop"
	Cron           Kind = "cron"
	Monitor        Kind = "monitor"
	SplitLocker    Kind = "legacy-split-locks"
	JavaGC         Kind = "java-gc"
	CryptoService  Kind = "crypto-service"
	RequestCoupled Kind = "request-coupled-db"
)

// BenignKinds are the benign workloads, for grids.
var BenignKinds = []Kind{Idle, Compiler, Database, VideoEncoder, MemBandwidth, TrainingLoop, Cron, Monitor, SplitLocker, JavaGC, CryptoService}

func u(rng *rand.Rand, lo, hi float64) float64 { return lo + rng.Float64()*(hi-lo) }

// noisy adds a slowly varying multiplicative wobble (a random walk of the
// log, refreshed every step seconds).
type wobble struct {
	rng   *rand.Rand
	sigma float64
	step  float64
	next  float64
	v     float64
}

func (w *wobble) at(t float64) float64 {
	for t >= w.next {
		w.v = 0.7*w.v + w.rng.NormFloat64()*w.sigma
		w.next += w.step
	}
	return math.Exp(w.v)
}

// idle is OS background: timer work and kworker bursts.
type idle struct {
	rng   *rand.Rand
	next  float64
	until float64
	w     wobble
}

func newIdle(rng *rand.Rand) *idle {
	return &idle{rng: rng, next: rng.ExpFloat64() * 2, w: wobble{rng: rng, sigma: 0.2, step: 0.05}}
}

func (w *idle) at(t float64) load {
	l := load{busy: 0.015 * w.w.at(t), ipc: 0.7, mpki: 2, rpki: 12, l1pki: 25, memSens: 0.2, memBound: 0.2}
	if t >= w.next {
		w.until = t + u(w.rng, 0.003, 0.04)
		w.next = t + w.rng.ExpFloat64()*1.5
	}
	if t < w.until {
		l.busy += 0.5
		l.mpki = 6
	}
	return l
}

// compiler runs jobs of random length and memory appetite (make -j).
type compiler struct {
	rng            *rand.Rand
	vcpus          float64
	on             bool
	until          float64
	busy, ipc, mpk float64
	w              wobble
}

func (w *compiler) at(t float64) load {
	for t >= w.until {
		w.on = !w.on
		if w.on {
			w.until = t + math.Min(8, 0.2*math.Exp(w.rng.NormFloat64()*1.0+0.8))
			w.busy = w.vcpus * u(w.rng, 0.4, 1)
			w.ipc = u(w.rng, 0.8, 1.9)
			w.mpk = math.Exp(u(w.rng, math.Log(1), math.Log(12)))
		} else {
			w.until = t + u(w.rng, 0.02, 1.5)
		}
	}
	if !w.on {
		return load{busy: 0.05, ipc: 0.8, mpki: 3, rpki: 15, l1pki: 20, memSens: 0.4, memBound: 0.3}
	}
	f := w.w.at(t)
	return load{busy: w.busy * math.Min(1.2, f), ipc: w.ipc, mpki: w.mpk * f, rpki: 20, l1pki: 30, memSens: 0.6, memBound: 0.4}
}

// database serves queries (noisy, with spikes), flushes its log every
// second and checkpoints every few tens of seconds.
type database struct {
	rng        *rand.Rand
	vcpus      float64
	level      wobble
	ckptEvery  float64
	ckptLen    float64
	ckptPhase  float64
	flushPhase float64
	spikeUntil float64
	nextSpike  float64
}

func (w *database) at(t float64) load {
	l := load{busy: w.vcpus * 0.3 * w.level.at(t), ipc: 0.9, mpki: 8, rpki: 30, l1pki: 35, memSens: 0.8, memBound: 0.5}
	if math.Mod(t+w.ckptPhase, w.ckptEvery) < w.ckptLen {
		l.busy += w.vcpus * 0.4
		l.mpki *= 2
	}
	if math.Mod(t+w.flushPhase, 1.0) < 0.02 {
		l.busy += 0.3
	}
	if t >= w.nextSpike {
		w.spikeUntil = t + u(w.rng, 0.1, 2)
		w.nextSpike = t + w.rng.ExpFloat64()*20
	}
	if t < w.spikeUntil {
		l.busy *= 2
	}
	l.busy = math.Min(l.busy, w.vcpus)
	return l
}

// videoEncoder encodes frames at a fixed rate: a burst of work per frame
// (heavier for I-frames), idle until the next frame is due.
type videoEncoder struct {
	rng      *rand.Rand
	vcpus    float64
	fps      float64
	work     float64
	gop      int
	frame    int
	frameEnd float64
	workEnd  float64
	iframe   bool
}

func (w *videoEncoder) at(t float64) load {
	for t >= w.frameEnd {
		w.frame++
		dur := 1 / w.fps
		start := w.frameEnd
		w.frameEnd = start + dur
		w.iframe = w.frame%w.gop == 0
		f := w.work * lognormal(w.rng, 0.15)
		if w.iframe {
			f = 0.98
		}
		w.workEnd = start + math.Min(0.98, f)*dur
	}
	if t < w.workEnd {
		m := 5.0
		if w.iframe {
			m = 8
		}
		return load{busy: w.vcpus * 0.9, ipc: 1.6, mpki: m, rpki: 25, l1pki: 40, memSens: 0.5, memBound: 0.4}
	}
	return load{busy: 0.05, ipc: 0.9, mpki: 2, rpki: 10, l1pki: 20, memSens: 0.2, memBound: 0.2}
}

// memBandwidth cycles through STREAM's four kernels; each has its own
// miss rate.
type memBandwidth struct {
	rng    *rand.Rand
	vcpus  float64
	kernel float64 // seconds per kernel
	mpki   [4]float64
	k      int
	until  float64
}

func (w *memBandwidth) at(t float64) load {
	for t >= w.until {
		w.k = (w.k + 1) % 4
		w.until += w.kernel * (1 + 0.03*w.rng.NormFloat64())
	}
	return load{busy: w.vcpus, ipc: 0.35, mpki: w.mpki[w.k], rpki: w.mpki[w.k] * 1.3, l1pki: 60, memSens: 0.3, memBound: 0.9}
}

// trainingLoop runs near-identical iterations: load a batch (memory
// heavy), then compute.
type trainingLoop struct {
	rng    *rand.Rand
	vcpus  float64
	period float64
	load   float64 // share of the iteration spent loading
	start  float64
	end    float64
}

func (w *trainingLoop) at(t float64) load {
	for t >= w.end {
		w.start = w.end
		w.end = w.start + w.period*(1+0.02*w.rng.NormFloat64())
	}
	if (t-w.start)/(w.end-w.start) < w.load {
		return load{busy: w.vcpus * 0.6, ipc: 0.5, mpki: 25, rpki: 35, l1pki: 50, memSens: 0.5, memBound: 0.7}
	}
	return load{busy: w.vcpus, ipc: 2.2, mpki: 1.5, rpki: 8, l1pki: 20, memSens: 0.3, memBound: 0.3}
}

// cron runs the same job on a fixed period with millisecond precision.
type cron struct {
	period, dur, phase float64
	mpki               float64
	bg                 *idle
}

func (w *cron) at(t float64) load {
	if math.Mod(t+w.phase, w.period) < w.dur {
		return load{busy: 1, ipc: 1.1, mpki: w.mpki, rpki: w.mpki * 3, l1pki: 30, memSens: 0.5, memBound: 0.5}
	}
	return w.bg.at(t)
}

// javaGC: an application with irregular load and stop-the-world
// collections every few seconds.
type javaGC struct {
	rng     *rand.Rand
	vcpus   float64
	level   wobble
	next    float64
	gcUntil float64
}

func (w *javaGC) at(t float64) load {
	if t >= w.next {
		w.gcUntil = t + u(w.rng, 0.05, 0.4)
		w.next = t + u(w.rng, 2, 12)
	}
	if t < w.gcUntil {
		return load{busy: w.vcpus, ipc: 0.6, mpki: 20, rpki: 40, l1pki: 60, memSens: 0.6, memBound: 0.6}
	}
	return load{busy: w.vcpus * 0.4 * w.level.at(t), ipc: 1.3, mpki: 3, rpki: 15, l1pki: 25, memSens: 0.5, memBound: 0.4}
}

// splitLocker is a legacy application whose misaligned atomics take split
// locks in irregular bursts.
type splitLocker struct {
	rng   *rand.Rand
	next  float64
	until float64
	rate  float64
	bg    *compiler
}

func (w *splitLocker) at(t float64) load {
	l := w.bg.at(t)
	if t >= w.next {
		w.until = t + u(w.rng, 0.02, 0.3)
		w.rate = math.Exp(u(w.rng, math.Log(2e3), math.Log(5e4)))
		w.next = t + w.rng.ExpFloat64()*1.5
	}
	if t < w.until {
		l.locks = w.rate
	}
	return l
}

// cryptoService alternates sensitive phases (TLS handshakes, signing
// batches: high IPC, few misses, samples in libcrypto) with ordinary
// application work. attacked raises its misses while an attacker evicts
// its lines.
type cryptoService struct {
	ph       phases
	vcpus    float64
	app      wobble
	attacked func(t float64) float64
}

func (w *cryptoService) sensitive(t float64) bool { return w.ph.at(t) }

func (w *cryptoService) at(t float64) load {
	if w.ph.at(t) {
		l := load{busy: 0.95, ipc: 2.5, mpki: 0.4, rpki: 4, l1pki: 6, sens: 0.9, memSens: 0.3, memBound: 0.3}
		if w.attacked != nil {
			l.mpki *= 1 + w.attacked(t)
		}
		return l
	}
	return load{busy: w.vcpus * 0.25 * w.app.at(t), ipc: 1.2, mpki: 3, rpki: 15, l1pki: 25, sens: 0.02, memSens: 0.4, memBound: 0.3}
}

// requestCoupled is a database serving a front end: its load follows the
// front end's requests, which include the front end's crypto phases.
type requestCoupled struct {
	front *cryptoService
	level wobble
	vcpus float64
}

func (w *requestCoupled) at(t float64) load {
	busy := w.vcpus * 0.1
	if w.front.sensitive(t - 0.01) {
		busy = w.vcpus * 0.5
	}
	return load{busy: busy * w.level.at(t), ipc: 0.9, mpki: 7, rpki: 30, l1pki: 35, memSens: 0.8, memBound: 0.5}
}

// newBenign builds a benign workload of kind k.
func newBenign(rng *rand.Rand, k Kind, vcpus int) workload {
	v := float64(vcpus)
	switch k {
	case Compiler:
		return &compiler{rng: rng, vcpus: v, w: wobble{rng: rng, sigma: 0.15, step: 0.1}}
	case Database:
		return &database{rng: rng, vcpus: v, level: wobble{rng: rng, sigma: 0.25, step: 0.05},
			ckptEvery: u(rng, 8, 40), ckptLen: u(rng, 0.5, 2.5), ckptPhase: u(rng, 0, 40), flushPhase: rng.Float64(), nextSpike: rng.ExpFloat64() * 20}
	case VideoEncoder:
		fps := []float64{24, 25, 30, 50, 60}[rng.IntN(5)]
		return &videoEncoder{rng: rng, vcpus: v, fps: fps, work: u(rng, 0.4, 0.85), gop: int(fps * u(rng, 1, 2.5)), frameEnd: rng.Float64() / fps}
	case MemBandwidth:
		m := &memBandwidth{rng: rng, vcpus: v, kernel: u(rng, 0.02, 0.2)}
		s := u(rng, 12, 30)
		m.mpki = [4]float64{s, s, s * 1.5, s * 1.5}
		return m
	case TrainingLoop:
		return &trainingLoop{rng: rng, vcpus: v, period: u(rng, 0.15, 1.2), load: u(rng, 0.15, 0.4)}
	case Cron:
		return &cron{period: []float64{1, 2, 5, 10}[rng.IntN(4)], dur: u(rng, 0.05, 0.6), phase: rng.Float64() * 10, mpki: u(rng, 4, 20), bg: newIdle(rng)}
	case Monitor:
		// Polls aligned to the wall-clock second, like agents with
		// round_interval: every monitor on the node fires together.
		return &cron{period: 1, dur: u(rng, 0.02, 0.08), phase: rng.Float64() * 0.003, mpki: u(rng, 2, 6), bg: newIdle(rng)}
	case SplitLocker:
		return &splitLocker{rng: rng, next: rng.ExpFloat64(), bg: &compiler{rng: rng, vcpus: v, w: wobble{rng: rng, sigma: 0.15, step: 0.1}}}
	case JavaGC:
		return &javaGC{rng: rng, vcpus: v, level: wobble{rng: rng, sigma: 0.3, step: 0.1}, next: u(rng, 0, 5)}
	case CryptoService:
		return newCryptoService(rng, v)
	}
	return newIdle(rng)
}

func newCryptoService(rng *rand.Rand, v float64) *cryptoService {
	return &cryptoService{vcpus: v, app: wobble{rng: rng, sigma: 0.3, step: 0.1},
		ph: phases{rng: rng, onMin: 0.2, onMax: u(rng, 0.6, 1.5), offMin: 0.4, offMax: u(rng, 1.5, 4), until: rng.Float64() * 2}}
}
