package tracegen

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// VMI is one VMI of a scenario. Role is "benign" unless the attack gives
// it one.
type VMI struct {
	Namespace string
	Name      string
	VCPUs     int
	Kind      Kind
}

// Attack describes the attack of a scenario.
type Attack struct {
	Kind AttackKind
	// Period is a covert channel's bit period.
	Period time.Duration
	Coding Coding
	// Duty is the active share of a slot for RZ coding.
	Duty float64
	// TxDuty is the share of time the channel transmits (1 = always).
	TxDuty float64
	// Rate is the sender's LLC misses (or locks) per second while active.
	Rate float64
	// Factor scales a side-channel attacker's misses during the victim's
	// crypto phases (>1 Prime+Probe, <1 Flush+Reload).
	Factor float64
	// Onset is when the attack starts.
	Onset time.Duration
	// Protect says which end of a covert channel is protected: "sender",
	// "receiver" or "both".
	Protect string
}

// Scenario is one labelled trace to generate.
type Scenario struct {
	Name     string
	Seed     uint64
	Node     string
	Duration time.Duration
	Interval time.Duration
	// SamplePeriod is the llc_misses sample period (0: not sampled);
	// LockSamplePeriod that of bus_locks.
	SamplePeriod     int64
	LockSamplePeriod int64
	// Benign VMIs; the attack adds its own (sender, receiver, victim,
	// attacker).
	VMIs   []VMI
	Attack *Attack
}

// Truth is the label of a generated trace, written as "# truth: {json}".
type Truth struct {
	Scenario   string              `json:"scenario"`
	Family     string              `json:"family"`
	Node       string              `json:"node"`
	DurationNS int64               `json:"duration_ns"`
	Type       v1alpha1.ThreatType `json:"type,omitempty"`
	OnsetNS    int64               `json:"onset_ns,omitempty"`
	// Victim is the VMI a correct detection names as victim; Ends are all
	// attack participants (victim included).
	Victim    string   `json:"victim,omitempty"`
	Ends      []string `json:"ends,omitempty"`
	Sender    string   `json:"sender,omitempty"`
	Receiver  string   `json:"receiver,omitempty"`
	Attacker  string   `json:"attacker,omitempty"`
	Protected []string `json:"protected"`
	VMIs      []string `json:"vmis"`
	// AttackVMIs counts the VMIs that take part in the attack.
	PeriodNS int64 `json:"period_ns,omitempty"`
}

// TruthKey is the metadata key of the label line.
const TruthKey = "truth"

// ParseTruth decodes a truth metadata value.
func ParseTruth(v []byte) (Truth, error) {
	var t Truth
	err := json.Unmarshal(v, &t)
	return t, err
}

type simVMI struct {
	spec     VMI
	ref      string
	w        workload
	weights  []float64
	offTick  int
	acc      [trace.NumCounters + 1]float64 // since last read
	cum      [trace.NumCounters + 1]float64 // for overflow sampling
	next     [trace.NumCounters + 1]float64
	missPrev float64
	lockPrev float64
	regions  regionSet
}

type regionSet struct {
	app, libc, kernel, crypto [2]uint64
	syms                      [][2]uint64
}

type row struct {
	t    int64
	vmi  int
	vcpu int
	ev   trace.Event
	val  uint64
}

const tick = 0.0005

// Generate writes sc as a trace to w and returns its truth.
func Generate(w io.Writer, sc Scenario) (Truth, error) {
	if sc.Interval <= 0 {
		sc.Interval = 100 * time.Millisecond
	}
	if sc.Node == "" {
		sc.Node = "node-1"
	}
	rng := rand.New(rand.NewPCG(sc.Seed, 0x5eed))
	var vs []*simVMI
	truth := Truth{Scenario: sc.Name, Node: sc.Node, DurationNS: sc.Duration.Nanoseconds(), Family: "benign"}
	add := func(v VMI, wl workload) *simVMI {
		if v.VCPUs <= 0 {
			v.VCPUs = 2
		}
		s := &simVMI{spec: v, ref: v.Namespace + "/" + v.Name, w: wl}
		vs = append(vs, s)
		truth.VMIs = append(truth.VMIs, s.ref)
		return s
	}
	var crypto []*cryptoService
	for _, v := range sc.VMIs {
		wl := newBenign(rng, v.Kind, max(1, v.VCPUs))
		if c, ok := wl.(*cryptoService); ok {
			crypto = append(crypto, c)
		}
		if v.Kind == RequestCoupled {
			front := newCryptoService(rng, 2)
			if len(crypto) > 0 {
				front = crypto[0]
			}
			wl = &requestCoupled{front: front, level: wobble{rng: rng, sigma: 0.2, step: 0.1}, vcpus: float64(max(1, v.VCPUs))}
		}
		add(v, wl)
	}
	end := sc.Duration.Seconds()
	if a := sc.Attack; a != nil {
		onset := a.Onset.Seconds()
		truth.OnsetNS = a.Onset.Nanoseconds()
		truth.Family = string(a.Kind)
		if strings.HasPrefix(sc.Name, "sparse-") {
			truth.Family = "sparse-" + string(a.Kind)
		}
		cover := func() workload { return newIdle(rng) }
		switch a.Kind {
		case CacheCovert, BusLockCovert:
			txd := a.TxDuty
			if txd <= 0 {
				txd = 1
			}
			ch := newChannel(rng, a.Period.Seconds(), a.Coding, a.Duty, onset, end+1, txd)
			var sw, rw workload
			if a.Kind == CacheCovert {
				truth.Type = v1alpha1.CacheCovertChannel
				sw = &cacheSender{ch: ch, rate: a.Rate, cover: cover()}
				rw = &cacheReceiver{ch: ch, rate: a.Rate * u(rng, 0.4, 1), lag: a.Period.Seconds() * u(rng, 0.05, 0.4), probe: u(rng, 5e6, 3e7), cover: cover()}
			} else {
				truth.Type = v1alpha1.BusLockCovertChannel
				sw = &lockSender{ch: ch, rate: a.Rate, cover: cover()}
				rw = &lockReceiver{onset: onset, cover: cover()}
			}
			s := add(VMI{Namespace: "tenant-a", Name: "exfil-src", VCPUs: 2}, sw)
			r := add(VMI{Namespace: "tenant-z", Name: "spy-sink", VCPUs: 2}, rw)
			truth.Sender, truth.Receiver = s.ref, r.ref
			truth.Ends = []string{s.ref, r.ref}
			truth.PeriodNS = a.Period.Nanoseconds()
			switch a.Protect {
			case "receiver":
				truth.Protected, truth.Victim = []string{r.ref}, r.ref
			case "both":
				truth.Protected, truth.Victim = nil, s.ref
			default:
				truth.Protected, truth.Victim = []string{s.ref}, s.ref
			}
		case PrimeProbe, FlushReload:
			truth.Type = v1alpha1.CacheSideChannel
			victim := newCryptoService(rng, 2)
			eff := u(rng, 0.8, 2.5)
			if a.Kind == FlushReload {
				eff = u(rng, 0.4, 1.2)
			}
			victim.attacked = func(t float64) float64 {
				if t >= onset {
					return eff
				}
				return 0
			}
			mpki := u(rng, 15, 40)
			if a.Kind == FlushReload {
				mpki = u(rng, 8, 20)
			}
			v := add(VMI{Namespace: "payments", Name: "tls-frontend", VCPUs: 2, Kind: CryptoService}, victim)
			at := add(VMI{Namespace: "tenant-z", Name: "probe", VCPUs: 2}, &sideAttacker{victim: victim, onset: onset, mpki: mpki, factor: a.Factor, cover: cover()})
			truth.Victim, truth.Attacker = v.ref, at.ref
			truth.Ends = []string{v.ref, at.ref}
			truth.Protected = []string{v.ref}
		}
	}
	if sc.Attack == nil {
		truth.Protected = nil // every VMI
	}
	for i, v := range vs {
		v.regions = makeRegions(i, v.spec.Kind == CryptoService || strings.Contains(v.spec.Name, "tls"))
		n := v.spec.VCPUs
		v.weights = make([]float64, n)
		v.offTick = rng.IntN(int(sc.Interval.Seconds() / tick))
		for k := range v.next {
			v.next[k] = float64(sc.SamplePeriod) * rng.Float64()
		}
		v.next[trace.BusLocks] = float64(sc.LockSamplePeriod) * rng.Float64()
	}

	tw := trace.NewWriter(w)
	tw.Meta(trace.MetaInterval, sc.Interval.String())
	if sc.SamplePeriod > 0 {
		tw.Meta(trace.MetaSamplePeriodPrefix+"llc_misses", fmt.Sprint(sc.SamplePeriod))
	}
	if sc.LockSamplePeriod > 0 {
		tw.Meta(trace.MetaSamplePeriodPrefix+"bus_locks", fmt.Sprint(sc.LockSamplePeriod))
	}
	tw.Meta(trace.MetaCPU, "GenuineIntel family 6 model 143 (simulated by sidewatch tracegen)")
	tj, _ := json.Marshal(truth)
	tw.Meta(TruthKey, string(tj))
	for _, v := range vs {
		for _, g := range v.guestRegions() {
			tw.Meta(trace.MetaGuestRegion, g.String())
		}
	}
	tw.Header()

	ticksPerInterval := int(math.Round(sc.Interval.Seconds() / tick))
	totalTicks := int(end / tick)
	loads := make([]load, len(vs))
	var rows, ctrs []row
	for chunk := 0; chunk*ticksPerInterval < totalTicks; chunk++ {
		rows = rows[:0]
		// New per-interval vCPU weights: the guest scheduler moves work.
		for _, v := range vs {
			var s float64
			for k := range v.weights {
				v.weights[k] = 0.2 + rng.Float64()
				if k == 0 {
					v.weights[k] += 1
				}
				s += v.weights[k]
			}
			for k := range v.weights {
				v.weights[k] /= s
			}
		}
		for tk := chunk * ticksPerInterval; tk < min(totalTicks, (chunk+1)*ticksPerInterval); tk++ {
			t := float64(tk) * tick
			tickStart := len(rows)
			var missAll, lockAll float64
			for i, v := range vs {
				loads[i] = v.w.at(t)
				missAll += v.missPrev
				lockAll += v.lockPrev
			}
			for i, v := range vs {
				l := loads[i]
				P := missAll - v.missPrev
				L := lockAll
				press := P / (P + 4e7)
				stall := 1 + l.memBound*3*L/(L+2e5)
				ipc := l.ipc / (1 + 0.3*l.memSens*press) / stall
				cyc := l.busy * 2.5e9
				ins := cyc * ipc
				miss := ins*l.mpki*(1+l.memSens*press)/1000 + l.missRate
				ref := ins*l.rpki/1000 + l.refRate + 0.2*miss
				l1 := ins * l.l1pki / 1000
				v.missPrev, v.lockPrev = miss, l.locks
				rates := [trace.NumCounters + 1]float64{
					trace.LLCReferences: ref, trace.LLCMisses: miss, trace.L1DMisses: l1,
					trace.BusLocks: l.locks, trace.SplitLocks: l.locks, trace.Instructions: ins, trace.Cycles: cyc,
				}
				for c := trace.Event(1); c <= trace.NumCounters; c++ {
					inc := rates[c] * tick
					v.acc[c] += inc
					period := 0.0
					switch c {
					case trace.LLCMisses:
						period = float64(sc.SamplePeriod)
					case trace.BusLocks:
						period = float64(sc.LockSamplePeriod)
					}
					if period <= 0 || inc <= 0 {
						continue
					}
					before := v.cum[c]
					v.cum[c] += inc
					for v.cum[c] >= v.next[c] {
						frac := (v.next[c] - before) / inc
						ts := int64((t + frac*tick) * 1e9)
						rows = append(rows, row{t: ts, vmi: i, vcpu: pick(rng, v.weights), ev: c.Sample(), val: v.regions.rip(rng, l.sens)})
						v.next[c] += period * (0.95 + 0.1*rng.Float64())
					}
				}
				if (tk+1-v.offTick)%ticksPerInterval == 0 {
					tr := int64(math.Round(float64(tk+1) * tick * 1e9))
					for k := range v.weights {
						for c := trace.Event(1); c <= trace.NumCounters; c++ {
							x := v.acc[c] * v.weights[k] * lognormal(rng, 0.02)
							ctrs = append(ctrs, row{t: tr, vmi: i, vcpu: k, ev: c, val: uint64(math.Round(x))})
						}
					}
					v.acc = [trace.NumCounters + 1]float64{}
				}
			}
			// Each VMI's samples of a tick are in time order, the VMIs'
			// interleave; the counter reads come at the tick's end.
			sortRows(rows, tickStart)
			rows = append(rows, ctrs...)
			ctrs = ctrs[:0]
		}
		// The ticks are in order but for rounding at their edges.
		sortRows(rows, 1)
		for _, r := range rows {
			v := vs[r.vmi]
			tw.Row(r.t, sc.Node, v.spec.Namespace, v.spec.Name, r.vcpu, r.ev, r.val)
		}
	}
	return truth, tw.Flush()
}

// sortRows sorts rows by time, stably (each vCPU's rows of equal time stay
// in the order they were made), given that rows[:from] are sorted: by
// insertion, as only a few rows are out of place.
func sortRows(rows []row, from int) {
	for i := max(from, 1); i < len(rows); i++ {
		for j := i; j > 0 && rows[j].t < rows[j-1].t; j-- {
			rows[j], rows[j-1] = rows[j-1], rows[j]
		}
	}
}

func pick(rng *rand.Rand, w []float64) int {
	x := rng.Float64()
	for i, p := range w {
		x -= p
		if x < 0 {
			return i
		}
	}
	return len(w) - 1
}

func makeRegions(i int, crypto bool) regionSet {
	var r regionSet
	r.app = [2]uint64{0x555555554000 + uint64(i)*0x1000000, 0x555555554000 + uint64(i)*0x1000000 + 0x200000}
	r.libc = [2]uint64{0x7f0000000000 + uint64(i)*0x10000000, 0x7f0000000000 + uint64(i)*0x10000000 + 0x1c0000}
	r.kernel = [2]uint64{0xffffffff81000000, 0xffffffff81e00000}
	if crypto {
		base := 0x7f1000000000 + uint64(i)*0x10000000
		r.crypto = [2]uint64{base, base + 0x400000}
		for _, s := range [][2]uint64{{0x100000, 0x102000}, {0x110000, 0x111000}, {0x200000, 0x203000}, {0x300000, 0x302000}} {
			r.syms = append(r.syms, [2]uint64{base + s[0], base + s[1]})
		}
	}
	return r
}

var cryptoSymbols = []string{"BN_mod_exp_mont_consttime", "bn_mul_mont", "ecp_nistz256_point_mul", "aesni_gcm_encrypt"}

func (v *simVMI) guestRegions() []trace.GuestRegion {
	ns, name := v.spec.Namespace, v.spec.Name
	r := v.regions
	out := []trace.GuestRegion{
		{Namespace: ns, VMI: name, Start: r.kernel[0], End: r.kernel[1], Path: "[kernel]"},
		{Namespace: ns, VMI: name, Start: r.app[0], End: r.app[1], Path: "/usr/bin/" + strings.ReplaceAll(string(v.spec.Kind)+"app", " ", "")},
		{Namespace: ns, VMI: name, Start: r.libc[0], End: r.libc[1], Path: "/usr/lib/x86_64-linux-gnu/libc.so.6"},
	}
	if r.crypto[1] > 0 {
		const lib = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"
		out = append(out, trace.GuestRegion{Namespace: ns, VMI: name, Start: r.crypto[0], End: r.crypto[1], Path: lib})
		for k, s := range r.syms {
			out = append(out, trace.GuestRegion{Namespace: ns, VMI: name, Start: s[0], End: s[1], Path: lib, Symbol: cryptoSymbols[k]})
		}
	}
	return out
}

// rip draws the guest instruction pointer of a sample: in sensitive code
// with probability sens (when the VMI has any), else in the application,
// libc or the kernel; 1% are unknown (0), as when the PMU cannot say.
func (r *regionSet) rip(rng *rand.Rand, sens float64) uint64 {
	x := rng.Float64()
	if x < 0.01 {
		return 0
	}
	in := func(a [2]uint64) uint64 { return a[0] + uint64(rng.Float64()*float64(a[1]-a[0]))&^3 }
	if len(r.syms) > 0 && rng.Float64() < sens {
		return in(r.syms[rng.IntN(len(r.syms))])
	}
	switch y := rng.Float64(); {
	case y < 0.5:
		return in(r.app)
	case y < 0.8:
		return in(r.libc)
	default:
		return in(r.kernel)
	}
}
