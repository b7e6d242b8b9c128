package agent

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/kernel"
	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

// coScheduler is the part of kernel.Loader that measures co-scheduling.
// ReadCoScheduling returns deltas since its previous call, so the agent
// has one reader: readCoScheduling, at every drain, into coschedHistory;
// whatever else needs co-scheduling (evidence snapshots, the detection
// engine) takes it from there.
type coScheduler interface {
	ReadCoScheduling() ([]kernel.CoSchedule, error)
}

// programErrer says why an eBPF program is not loaded (kernel.Loader).
type programErrer interface {
	ProgramErr(name string) error
}

// maxCoschedPairs bounds the VMI pairs whose co-scheduling the agent
// remembers (3.6 KiB each); pairs idle for the whole history go first.
const maxCoschedPairs = 1024

// coschedHistory is the co-scheduling of VMI pairs over the last
// historyBins drains: per bin, how long vCPUs of the two ran at once on SMT
// siblings and on CPUs sharing an LLC (summed over their vCPU pairs), and
// how often one took a CPU over from the other.
type coschedHistory struct {
	stepNS  int64
	since   int64 // first read, Unix ns
	pairs   map[[2]string]*pairHistory
	dropped uint64
	err     error // the last read's error
}

type pairHistory struct {
	head int64 // newest bin index (time/stepNS)
	smt  [historyBins]uint32
	llc  [historyBins]uint32 // microseconds
	ho   [historyBins]uint32
}

func (p *pairHistory) advance(idx int64) {
	if idx <= p.head {
		return
	}
	for i := max(p.head+1, idx-historyBins+1); i <= idx; i++ {
		j := i % historyBins
		p.smt[j], p.llc[j], p.ho[j] = 0, 0, 0
	}
	p.head = idx
}

// at is bin idx in nanoseconds and handovers, zero outside the history.
// The times are summed over the two VMIs' vCPU pairs, so they are capped
// at the step: the time some vCPU of each ran at once is at most that.
func (p *pairHistory) at(idx, stepNS int64) (smt, llc, handovers int64) {
	if idx > p.head || idx <= p.head-historyBins {
		return 0, 0, 0
	}
	j := idx % historyBins
	return min(int64(p.smt[j])*1000, stepNS), min(int64(p.llc[j])*1000, stepNS), int64(p.ho[j])
}

func saturatingAdd(a uint32, b uint64) uint32 {
	if s := uint64(a) + b; s < 1<<32 {
		return uint32(s)
	}
	return 1<<32 - 1
}

// readCoScheduling adds what the sched_switch program measured since the
// previous drain to the history.
func (a *Agent) readCoScheduling(now time.Time) {
	cs, ok := a.opts.Kernel.(coScheduler)
	if !ok || len(a.kthreads) == 0 {
		return
	}
	h := a.cosched
	if h == nil {
		h = &coschedHistory{stepNS: int64(a.opts.DrainInterval), since: now.UnixNano(), pairs: map[[2]string]*pairHistory{}}
		a.cosched = h
	}
	pairs, err := cs.ReadCoScheduling()
	if h.err = err; err != nil {
		if !errors.Is(err, kernel.ErrNotLoaded) {
			a.log.V(1).Info("eBPF: reading co-scheduling", "err", err.Error())
		}
		return
	}
	idx := now.UnixNano() / h.stepNS
	for _, p := range pairs {
		if p.A.VMI == "" || p.B.VMI == "" || p.A.VMI == p.B.VMI {
			continue
		}
		k := [2]string{min(p.A.VMI, p.B.VMI), max(p.A.VMI, p.B.VMI)}
		ph := h.pairs[k]
		if ph == nil {
			if len(h.pairs) >= maxCoschedPairs && !h.evict(idx) {
				h.dropped++
				continue
			}
			ph = &pairHistory{head: idx}
			h.pairs[k] = ph
		}
		ph.advance(idx)
		j := idx % historyBins
		ph.smt[j] = saturatingAdd(ph.smt[j], uint64(p.SMT/time.Microsecond))
		ph.llc[j] = saturatingAdd(ph.llc[j], uint64(p.LLC/time.Microsecond))
		ph.ho[j] = saturatingAdd(ph.ho[j], p.Handovers)
	}
}

// evict drops the pairs that did not co-run within the history; it
// reports whether there is room now.
func (h *coschedHistory) evict(idx int64) bool {
	for k, p := range h.pairs {
		if p.head <= idx-historyBins {
			delete(h.pairs, k)
		}
	}
	return len(h.pairs) < maxCoschedPairs
}

// coScheduling fills the snapshot's co-scheduling: one entry per pair of
// the VMIs involved, zero when measured and they never ran at once (that is
// evidence too: no core or cache sharing), or a gap saying why it was not
// measured.
func (a *Agent) coScheduling(s *evidence.Snapshot, keys []string, now time.Time) {
	if reason := a.coschedUnavailable(); reason != "" {
		s.Gaps = append(s.Gaps, evidence.Gap{Part: "coScheduling", Reason: reason})
		return
	}
	h := a.cosched
	if h.err != nil {
		s.Gaps = append(s.Gaps, evidence.Gap{Part: "coScheduling", Reason: "reading the eBPF co-scheduling map failed: " + h.err.Error()})
	}
	nowIdx := now.UnixNano() / h.stepNS
	first := max(nowIdx-historyBins+1, (h.since+h.stepNS-1)/h.stepNS)
	if first > nowIdx {
		first = nowIdx
	}
	onsetNS := s.Onset.UnixNano()
	for i, x := range keys {
		for _, y := range keys[i+1:] {
			if x == y {
				continue
			}
			k := [2]string{min(x, y), max(x, y)}
			c := evidence.CoScheduling{A: k[0], B: k[1], WindowNs: (nowIdx - first + 1) * h.stepNS}
			if p := h.pairs[k]; p != nil && p.head > nowIdx-historyBins {
				o := &evidence.Overlap{StartNs: first*h.stepNS - onsetNS, StepNs: h.stepNS}
				step := float64(h.stepNS)
				for idx := first; idx <= nowIdx; idx++ {
					smt, llc, ho := p.at(idx, h.stepNS)
					c.SMTSiblingNs += smt
					c.SharedLLCNs += llc
					c.Handovers += ho
					o.SMTSibling = append(o.SMTSibling, float64(smt)/step)
					o.SharedLLC = append(o.SharedLLC, float64(llc)/step)
				}
				c.Overlap = o
			}
			s.CoScheduling = append(s.CoScheduling, c)
		}
	}
	if h.dropped > 0 {
		s.Gaps = append(s.Gaps, evidence.Gap{Part: "coScheduling", Reason: fmt.Sprintf("%d readings of new VMI pairs dropped: the agent follows at most %d pairs", h.dropped, maxCoschedPairs)})
	}
}

// coschedUnavailable says why co-scheduling is not measured here, or "".
func (a *Agent) coschedUnavailable() string {
	if a.opts.Kernel == nil {
		for _, p := range a.opts.Capabilities.EBPF {
			if !p.Loaded && (p.Name == kernel.ProgramSchedSwitch || p.Name == "ebpf") && p.Reason != "" {
				return "eBPF co-scheduling unavailable on this node: " + p.Reason
			}
		}
		return "eBPF programs are not loaded on this node (no co-scheduling measurement)"
	}
	if _, ok := a.opts.Kernel.(coScheduler); !ok {
		return "the node's eBPF loader does not measure co-scheduling"
	}
	if pe, ok := a.opts.Kernel.(programErrer); ok {
		if err := pe.ProgramErr(kernel.ProgramSchedSwitch); err != nil {
			return "the eBPF sched_switch program is not loaded: " + err.Error()
		}
	}
	if a.cosched == nil {
		return "no vCPU thread was registered with the eBPF co-scheduling program yet"
	}
	return ""
}

// colocation sums a VMI pair's co-scheduling over the history bins that
// fall in [fromNS, toNS]; WindowNS 0 when none does.
func (h *coschedHistory) colocation(x, y string, fromNS, toNS int64) detect.Colocation {
	first := max(fromNS, h.since) / h.stepNS
	last := toNS / h.stepNS
	var c detect.Colocation
	if last < first {
		return c
	}
	c.WindowNS = (last - first + 1) * h.stepNS
	p := h.pairs[[2]string{min(x, y), max(x, y)}]
	if p == nil {
		return c
	}
	for idx := max(first, p.head-historyBins+1); idx <= min(last, p.head); idx++ {
		smt, llc, ho := p.at(idx, h.stepNS)
		c.SMTSiblingNS += smt
		c.SharedLLCNS += llc
		c.Handovers += ho
	}
	return c
}

// weighByColocation weighs each suspect's score by how much it shared the
// victim's hardware while the evidence accrued (detect.ColocationWeight),
// records the figures on the suspect and ranks the suspects again. The
// detection's own score follows its best-placed suspect: a cache attack
// whose every suspect never shared a cache with the victim is implausible,
// and its severity drops with its score. Nothing changes where
// co-scheduling is not measured.
func (a *Agent) weighByColocation(d *report.Detection) {
	h := a.cosched
	if h == nil || len(d.Suspects) == 0 || a.coschedUnavailable() != "" {
		return
	}
	to := d.Time.UnixNano()
	from := min(d.FirstSeen.UnixNano(), to)
	if d.Evidence.Window != nil {
		from -= d.Evidence.Window.Duration.Nanoseconds()
	}
	victim := d.Victim.Namespace + "/" + d.Victim.Name
	best := 0.0
	for i := range d.Suspects {
		s := &d.Suspects[i]
		c := h.colocation(victim, s.Namespace+"/"+s.Name, from, to)
		w, why := detect.ColocationWeight(d.Type, c)
		best = max(best, w)
		if c.WindowNS == 0 {
			best = 1 // one suspect unmeasured: no grounds to doubt the detection
			continue
		}
		win := float64(c.WindowNS)
		s.Score *= w
		s.CoScheduling = &v1alpha1.SuspectCoScheduling{
			Window:    metav1.Duration{Duration: time.Duration(c.WindowNS)},
			SharedLLC: min(float64(c.SharedLLCNS)/win, 1), SMTSiblings: min(float64(c.SMTSiblingNS)/win, 1),
			Handovers: c.Handovers, Weight: w,
		}
		if w < 1 {
			a.log.Info("suspect weighed down by co-scheduling", "type", d.Type, "victim", victim, "suspect", s.Namespace+"/"+s.Name, "weight", w, "why", why)
		}
	}
	slices.SortStableFunc(d.Suspects, func(x, y v1alpha1.Suspect) int { return cmp.Compare(y.Score, x.Score) })
	if best < 1 {
		d.Score *= best
		d.Severity = v1alpha1.SeverityForScore(d.Score)
	}
}
