package agent

import (
	"cmp"
	"slices"
	"time"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

// What the agent remembers per VMI for evidence snapshots: the counter
// series (summed over the VMI's vCPUs, one bin per collection interval)
// and sampled guest addresses over the same 30 s, at most samplesPerBin per
// bin, so that the samples around a detection's onset are still there when
// the detection comes (seconds later), whatever the sample rate.
const (
	historyBins   = 300 // 30 s at 100 ms
	samplesPerBin = 8   // sampled addresses kept per VMI and bin
	// snapshotSamples is how many samples per VMI a snapshot carries, those
	// nearest the onset, each attributed by introspection.
	snapshotSamples = 512
)

// eventHistory is one counter of one VMI, binned.
type eventHistory struct {
	bins [historyBins]float64
	head int64 // index (time/binNS) of the newest bin; -1 before any value
}

func (h *eventHistory) add(idx int64, v float64) {
	switch {
	case h.head < 0:
		h.head = idx
	case idx > h.head:
		for i := max(h.head+1, idx-historyBins+1); i <= idx; i++ {
			h.bins[i%historyBins] = 0
		}
		h.head = idx
	case idx <= h.head-historyBins:
		return // older than what is kept
	}
	h.bins[idx%historyBins] += v
}

// recentSample is a sampled guest address of a VMI.
type recentSample struct {
	t    int64
	ip   uint64
	vcpu int32
	ev   uint8 // index in vmiHistory.events; branchEvent for branch targets
}

const branchEvent = 255

// sampleStore keeps, per history bin, a uniform random choice of at most
// samplesPerBin of the bin's samples (reservoir sampling): a fixed 60 KiB
// per VMI that samples guest addresses, whatever its rate.
type sampleStore struct {
	s    [historyBins * samplesPerBin]recentSample
	bin  [historyBins]int64  // the bin each group holds; -1: none
	seen [historyBins]uint32 // samples offered to the group's bin
	head int64               // newest bin
	rng  uint64
}

func newSampleStore() *sampleStore {
	st := &sampleStore{head: -1, rng: 0x9e3779b97f4a7c15}
	for i := range st.bin {
		st.bin[i] = -1
	}
	return st
}

func (st *sampleStore) add(idx int64, x recentSample) {
	if idx < 0 || idx <= st.head-historyBins {
		return // older than what is kept
	}
	g := idx % historyBins
	if st.bin[g] != idx {
		if st.bin[g] > idx {
			return
		}
		st.bin[g], st.seen[g] = idx, 0
	}
	st.seen[g]++
	j := st.seen[g] - 1
	if j >= samplesPerBin {
		// Keep each of the bin's samples with equal probability.
		st.rng ^= st.rng << 13
		st.rng ^= st.rng >> 7
		st.rng ^= st.rng << 17
		if j = uint32(st.rng % uint64(st.seen[g])); j >= samplesPerBin {
			return
		}
	}
	st.s[g*samplesPerBin+int64(j)] = x
	st.head = max(st.head, idx)
}

// each calls f for every sample kept, bin by bin (not in time order).
func (st *sampleStore) each(f func(recentSample)) {
	if st == nil {
		return
	}
	for g := range historyBins {
		if st.bin[g] < 0 || st.bin[g] <= st.head-historyBins {
			continue
		}
		for _, x := range st.s[g*samplesPerBin : g*samplesPerBin+int(min(st.seen[g], samplesPerBin))] {
			f(x)
		}
	}
}

// vmiHistory is one VMI's memory.
type vmiHistory struct {
	binNS   int64
	events  []string
	series  []*eventHistory
	samples *sampleStore // allocated with the first guest sample
}

func newVMIHistory(binNS int64) *vmiHistory { return &vmiHistory{binNS: binNS} }

func (h *vmiHistory) eventIndex(ev string) int {
	for i, e := range h.events {
		if e == ev {
			return i
		}
	}
	if len(h.events) >= 16 {
		return -1
	}
	h.events = append(h.events, ev)
	h.series = append(h.series, &eventHistory{head: -1})
	return len(h.events) - 1
}

func (h *vmiHistory) addCounter(t int64, ev string, v uint64) {
	if i := h.eventIndex(ev); i >= 0 {
		h.series[i].add(t/h.binNS, float64(v))
	}
}

func (h *vmiHistory) addSample(t int64, vcpu int, ev string, ip uint64) {
	idx := branchEvent
	if ev != "" {
		if i := h.eventIndex(ev); i >= 0 && i < branchEvent {
			idx = i
		}
	}
	if h.samples == nil {
		h.samples = newSampleStore()
	}
	h.samples.add(t/h.binNS, recentSample{t: t, ip: ip, vcpu: int32(vcpu), ev: uint8(idx)})
}

// topAddrs returns the k most sampled addresses among the samples kept,
// most samples first, each with the vCPU and time of its latest sample.
func (h *vmiHistory) topAddrs(k int) []AddrCount {
	byAddr := map[uint64]*AddrCount{}
	h.samples.each(func(x recentSample) {
		ac := byAddr[x.ip]
		if ac == nil {
			ac = &AddrCount{Addr: x.ip}
			byAddr[x.ip] = ac
		}
		ac.Samples++
		if t := time.Unix(0, x.t); t.After(ac.At) || ac.Samples == 1 {
			ac.VCPU, ac.At = int(x.vcpu), t
		}
	})
	out := make([]AddrCount, 0, len(byAddr))
	for _, ac := range byAddr {
		out = append(out, *ac)
	}
	slices.SortFunc(out, func(x, y AddrCount) int {
		if x.Samples != y.Samples {
			return int(y.Samples - x.Samples)
		}
		if x.Addr < y.Addr {
			return -1
		}
		return 1
	})
	return out[:min(k, len(out))]
}

// nearOnset returns the guest samples kept (not branch targets) nearest
// onsetNS, at most n, in time order.
func (h *vmiHistory) nearOnset(onsetNS int64, n int) []recentSample {
	var all []recentSample
	h.samples.each(func(x recentSample) {
		if x.ev != branchEvent && x.ip != 0 {
			all = append(all, x)
		}
	})
	if len(all) > n {
		dist := func(x recentSample) int64 { return max(x.t-onsetNS, onsetNS-x.t) }
		slices.SortFunc(all, func(x, y recentSample) int { return cmp.Compare(dist(x), dist(y)) })
		all = all[:n]
	}
	slices.SortFunc(all, func(x, y recentSample) int { return cmp.Compare(x.t, y.t) })
	return all
}

// captureKey names the finding a detection goes to: one per victim and
// type while active (report.FindingWriter).
type captureKey struct {
	victim discovery.VMIRef
	typ    v1alpha1.ThreatType
}

// capture is the last snapshot taken for a finding.
type capture struct {
	at       time.Time
	severity int
}

// recapture is how long a finding's snapshot stands before a new detection
// of the same severity gets its own.
const recapture = 30 * time.Second

// captureEvidence gives a detection an evidence snapshot when the finding
// writer may store it: the finding writer stores the snapshot of the
// strongest detection when it creates a finding and when its severity
// rises. Completing a snapshot reads guest memory (process lists, the
// attribution of every sample), so the other detections of an ongoing
// attack get none: merging keeps the snapshot already taken. A snapshot is
// taken again after recapture, so a finding opened anew (the old one
// resolved) gets one too.
func (a *Agent) captureEvidence(d *report.Detection, now time.Time) {
	k := captureKey{discovery.VMIRef(d.Victim), d.Type}
	rank := d.Severity.Rank()
	if c, ok := a.captured[k]; ok && rank <= c.severity && now.Sub(c.at) < recapture {
		return
	}
	if len(a.captured) >= 4096 {
		for ck, c := range a.captured {
			if now.Sub(c.at) >= recapture {
				delete(a.captured, ck)
			}
		}
	}
	a.captured[k] = capture{at: now, severity: rank}
	d.Snapshot = a.snapshot(*d, now)
}

// snapshot builds the evidence snapshot of a detection from what the
// agent remembers: the VMIs, the host, the counter series and samples of
// the victim and suspects, the detector's figures, the co-scheduling of
// every pair of them. What needs guest memory (process lists, each
// sample's attribution, host CPUs) is added off the loop, by
// completeSnapshot.
func (a *Agent) snapshot(d report.Detection, now time.Time) *evidence.Snapshot {
	onset := d.FirstSeen
	if onset.IsZero() {
		onset = d.Time
	}
	s := &evidence.Snapshot{
		CapturedAt: now,
		Onset:      onset,
		Host:       a.opts.Host,
	}
	s.Host.Node = a.opts.Node
	s.Host.UnavailableSignals = d.Evidence.UnavailableSignals
	if d.Forensics != nil {
		s.Detector = *d.Forensics
	}
	s.Detector.Name, s.Detector.Score = d.Detector, d.Score
	if len(s.Detector.EventRates) == 0 {
		s.Detector.EventRates = d.Evidence.EventRates
	}
	involved := []struct {
		ref  discovery.VMIRef
		uid  string
		role string
	}{{discovery.VMIRef(d.Victim), string(d.VictimUID), evidence.RoleVictim}}
	for _, sus := range d.Suspects {
		role := sus.Role
		if role == "" {
			role = "Unknown"
		}
		involved = append(involved, struct {
			ref  discovery.VMIRef
			uid  string
			role string
		}{discovery.VMIRef{Namespace: sus.Namespace, Name: sus.Name}, string(sus.UID), role})
	}
	onsetNS := onset.UnixNano()
	keys := make([]string, 0, len(involved))
	for _, v := range involved {
		keys = append(keys, v.ref.Namespace+"/"+v.ref.Name)
	}
	a.coScheduling(s, keys, now)
	for _, v := range involved {
		key := v.ref.Namespace + "/" + v.ref.Name
		vcpus := int32(0)
		for st := range a.streams {
			if st.Namespace == v.ref.Namespace && st.VMI == v.ref.Name {
				vcpus++
			}
		}
		s.VMIs = append(s.VMIs, evidence.VMI{Namespace: v.ref.Namespace, Name: v.ref.Name, UID: a.uid(v.ref), Role: v.role, VCPUs: vcpus})
		h := a.history[v.ref]
		if h == nil {
			continue
		}
		for i, ev := range h.events {
			if _, ok := counterEvent(ev); !ok {
				continue
			}
			eh := h.series[i]
			if eh.head < 0 {
				continue
			}
			first := max(eh.head-historyBins+1, 0)
			vals := make([]float64, 0, eh.head-first+1)
			for idx := first; idx <= eh.head; idx++ {
				vals = append(vals, eh.bins[idx%historyBins])
			}
			s.Series = append(s.Series, evidence.Series{
				VMI: key, Event: v1alpha1.CounterEvent(ev),
				StartNs: first*h.binNS - onsetNS, StepNs: h.binNS, Values: vals,
			})
		}
		for _, x := range h.nearOnset(onsetNS, snapshotSamples) {
			ev := v1alpha1.CounterEvent("")
			if int(x.ev) < len(h.events) {
				ev = v1alpha1.CounterEvent(h.events[x.ev])
			}
			s.Samples = append(s.Samples, evidence.Sample{VMI: key, VCPU: x.vcpu, TNs: x.t - onsetNS, Event: ev, RIP: evidence.Hex(x.ip)})
		}
	}
	return s
}

func counterEvent(name string) (v1alpha1.CounterEvent, bool) {
	for _, e := range v1alpha1.AllCounterEvents {
		if string(e) == name {
			return e, true
		}
	}
	return "", false
}

// forensics maps the engine's plot data to the snapshot's detector
// section (docs/forensics.md, "Where the detection engine's figures go").
func forensics(d *detect.Detection) *evidence.Detector {
	out := &evidence.Detector{Figures: map[string]float64{}}
	e, s := d.Evidence, d.Series
	onset := d.FirstCrossingNS
	if onset == 0 || onset > d.TimeNS {
		onset = d.TimeNS
	}
	victim := d.Victim.String()
	first := ""
	if len(d.Suspects) > 0 {
		first = d.Suspects[0].VMIRef.String()
	}
	if s != nil {
		if c := correlogram(s.Autocorrelation, victim, e.AutocorrelationPeak, s.PeakLagNS); c != nil {
			out.Autocorrelation = c
		}
		if first != "" {
			if c := correlogram(s.CrossCorrelation, victim+"+"+first, e.Correlation, e.LagNS); c != nil {
				out.CrossCorrelation = c
			}
		}
		if len(s.BurstStartsNS) > 0 {
			bt := evidence.BurstTrain{VMI: first, Event: v1alpha1.EventBusLocks, MeanPeriodNs: e.PeriodNS, LocksPerSecond: e.LocksPerSecond}
			if bt.VMI == "" {
				bt.VMI = victim
			}
			for i, t := range s.BurstStartsNS {
				bt.TimesNs = append(bt.TimesNs, t-onset)
				if i > 0 {
					bt.PeriodsNs = append(bt.PeriodsNs, t-s.BurstStartsNS[i-1])
				}
			}
			out.Bursts = []evidence.BurstTrain{bt}
		}
		if s.Sensitive != nil && first != "" {
			pc := evidence.PhaseCorrelation{Suspect: first, Victim: victim, Signature: e.Signature, Coefficient: clamp(e.Correlation, -1, 1)}
			pc.Phases = evidence.IntervalsFromTrain(s.Sensitive.StartNS-onset, s.Sensitive.StepNS, s.Sensitive.Values, 0.5)
			if s.Anomaly != nil {
				// The anomaly train is a robust z-score; 4 is the detector's
				// default anomalyThreshold.
				pc.Anomalies = evidence.IntervalsFromTrain(s.Anomaly.StartNS-onset, s.Anomaly.StepNS, s.Anomaly.Values, 4)
			}
			out.PhaseCorrelation = []evidence.PhaseCorrelation{pc}
		}
	}
	for _, r := range e.EventRates {
		if ev, ok := counterEvent(r.Event); ok {
			out.EventRates = append(out.EventRates, v1alpha1.EventRate{VMI: r.VMI, Event: ev, PerSecond: max(r.PerSecond, 0)})
		}
	}
	for name, v := range map[string]float64{
		"oscillation": e.Oscillation, "regularity": e.Regularity, "sensitiveFraction": e.SensitiveFraction,
		"anomalyScore": e.AnomalyScore, "bitsPerSecond": e.BitsPerSecond, "burstsPerSecond": e.BurstsPerSecond,
		"locksPerSecond": e.LocksPerSecond, "correlation": e.Correlation, "autocorrelationPeak": e.AutocorrelationPeak,
		"trainBinNs": float64(e.TrainBinNS), "periodNs": float64(e.PeriodNS), "lagNs": float64(e.LagNS),
		"windowNs": float64(e.WindowNS), "bursts": float64(e.Bursts), "samples": float64(e.Samples),
	} {
		if v != 0 {
			out.Figures[name] = v
		}
	}
	return out
}

func correlogram(c *detect.Curve, vmi string, peak float64, peakLag int64) *evidence.Correlogram {
	if c == nil || len(c.LagsNS) < 2 || len(c.Values) != len(c.LagsNS) {
		return nil
	}
	out := &evidence.Correlogram{
		VMI: vmi, Event: v1alpha1.EventLLCMisses,
		FirstLagNs: c.LagsNS[0], LagStepNs: c.LagsNS[1] - c.LagsNS[0],
		PeakLagNs: peakLag, PeakValue: clamp(peak, -1, 1),
	}
	if out.LagStepNs <= 0 {
		return nil
	}
	for _, v := range c.Values {
		out.Values = append(out.Values, float64(v))
	}
	return out
}
