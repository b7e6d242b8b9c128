package evidence

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// A trimStage drops one kind of data, one level at a time. apply trims s to
// the given level and reports whether it changed anything; note compares
// the snapshot before trimming with the current one and says what is gone.
type trimStage struct {
	name   string
	levels int
	apply  func(s *Snapshot, level int) bool
	note   func(orig, cur *Snapshot) string
}

// stages run in this order; Encode's comment and docs/forensics.md list
// them for readers.
var stages = []trimStage{
	{name: "samples", levels: len(sampleKeepFirst), apply: trimSamples(sampleKeepFirst), note: noteSamples},
	{name: "series-window", levels: 16, apply: trimSeriesWindow, note: noteSeriesWindow},
	{name: "processes", levels: 4, apply: trimProcesses, note: noteProcesses},
	{name: "series-resolution", levels: 16, apply: trimSeriesResolution, note: noteSeriesResolution},
	{name: "co-scheduling", levels: 16, apply: trimCoScheduling, note: noteCoScheduling},
	{name: "samples", levels: len(sampleKeepLast), apply: trimSamples(sampleKeepLast), note: noteSamples},
	{name: "detector", levels: len(detectorKeep), apply: trimDetector, note: noteDetector},
	{name: "series", levels: 2, apply: trimSeries, note: noteSeries},
	{name: "attribution", levels: len(programKeep), apply: trimAttribution, note: noteAttribution},
	{name: "last-resort", levels: 1, apply: trimLastResort, note: noteLastResort},
	{name: "minimal", levels: 1, apply: trimMinimal, note: noteMinimal},
}

var (
	sampleKeepFirst = []int{4096, 2048, 1024}
	sampleKeepLast  = []int{512, 256, 0}
	detectorKeep    = []int{1024, 256, 64}
	programKeep     = []int{16, 4}
)

const (
	minWindowValues     = 1024 // series-window stops here
	minResolutionValues = 128  // series-resolution and co-scheduling stop here
	libraryKeep         = 8
	processKeepFirst    = 64
	processKeepLast     = 16
)

// window returns [lo, hi) of n consecutive indices centred on the element
// whose key is nearest 0 (the onset).
func window(length, n int, key func(i int) int64) (lo, hi int) {
	if n >= length {
		return 0, length
	}
	best, bestD := 0, int64(-1)
	for i := 0; i < length; i++ {
		d := key(i)
		if d < 0 {
			d = -d
		}
		if bestD < 0 || d < bestD {
			best, bestD = i, d
		}
	}
	lo = min(max(best-n/2, 0), length-n)
	return lo, lo + n
}

func trimSamples(keeps []int) func(s *Snapshot, level int) bool {
	return func(s *Snapshot, level int) bool { return keepSamples(s, keeps[level]) }
}

func keepSamples(s *Snapshot, keep int) bool {
	if len(s.Samples) <= keep {
		return false
	}
	if keep == 0 {
		s.Samples = nil
		return true
	}
	// The samples nearest the onset, in their original order.
	idx := make([]int, len(s.Samples))
	for i := range idx {
		idx[i] = i
	}
	abs := func(v int64) int64 { return max(v, -v) }
	slices.SortStableFunc(idx, func(a, b int) int {
		da, db := abs(s.Samples[a].TNs), abs(s.Samples[b].TNs)
		switch {
		case da < db:
			return -1
		case da > db:
			return 1
		}
		return 0
	})
	idx = idx[:keep]
	slices.Sort(idx)
	kept := make([]Sample, 0, keep)
	for _, i := range idx {
		kept = append(kept, s.Samples[i])
	}
	s.Samples = kept
	return true
}

func noteSamples(orig, cur *Snapshot) string {
	n, k := len(orig.Samples), len(cur.Samples)
	if k == n {
		return ""
	}
	if k == 0 {
		return fmt.Sprintf("dropped all %d address samples; the attribution still counts all of them", n)
	}
	lo, hi := cur.Samples[0].TNs, cur.Samples[0].TNs
	for _, sm := range cur.Samples {
		lo, hi = min(lo, sm.TNs), max(hi, sm.TNs)
	}
	return fmt.Sprintf("kept %d of %d address samples, those nearest the onset (%s to %s); the attribution still counts all %d", k, n, offset(lo), offset(hi), n)
}

func trimProcesses(s *Snapshot, level int) bool {
	changed := false
	switch level {
	case 0, 2:
		keep := libraryKeep
		if level == 2 {
			keep = 0
		}
		for i := range s.Processes {
			for j := range s.Processes[i].Processes {
				p := &s.Processes[i].Processes[j]
				if len(p.Libraries) > keep {
					p.Libraries = p.Libraries[:keep:keep]
					changed = true
				}
			}
		}
	case 1, 3:
		keep := processKeepFirst
		if level == 3 {
			keep = processKeepLast
		}
		// Keep the processes the samples point at, then the lowest pids
		// (init, the system daemons: the process tree's trunk).
		attributed := map[string]map[int32]bool{}
		for _, a := range s.Attribution {
			for _, g := range a.Programs {
				if attributed[a.VMI] == nil {
					attributed[a.VMI] = map[int32]bool{}
				}
				attributed[a.VMI][g.PID] = true
			}
		}
		for i := range s.Processes {
			l := &s.Processes[i]
			if len(l.Processes) <= keep {
				continue
			}
			ps := slices.Clone(l.Processes)
			slices.SortStableFunc(ps, func(a, b Process) int {
				aa, ba := attributed[l.VMI][a.PID], attributed[l.VMI][b.PID]
				switch {
				case aa && !ba:
					return -1
				case ba && !aa:
					return 1
				}
				return int(a.PID - b.PID)
			})
			ps = ps[:keep]
			slices.SortFunc(ps, func(a, b Process) int { return int(a.PID - b.PID) })
			l.Processes = ps
			changed = true
		}
	}
	return changed
}

func noteProcesses(orig, cur *Snapshot) string {
	count := func(s *Snapshot) (procs, libs int) {
		for _, l := range s.Processes {
			procs += len(l.Processes)
			for _, p := range l.Processes {
				libs += len(p.Libraries)
			}
		}
		return
	}
	op, ol := count(orig)
	cp, cl := count(cur)
	if op == cp && ol == cl {
		return ""
	}
	return fmt.Sprintf("kept %d of %d guest processes (those with attributed samples first, then the lowest pids) and %d of %d library names", cp, op, cl, ol)
}

func longestSeries(s *Snapshot) int {
	n := 0
	for _, se := range s.Series {
		n = max(n, len(se.Values))
	}
	return n
}

func trimSeriesWindow(s *Snapshot, _ int) bool {
	limit := longestSeries(s) / 2
	if limit < minWindowValues {
		return false
	}
	for i := range s.Series {
		se := &s.Series[i]
		if len(se.Values) <= limit {
			continue
		}
		lo, hi := window(len(se.Values), limit, func(j int) int64 { return se.StartNs + int64(j)*se.StepNs + se.StepNs/2 })
		se.StartNs += int64(lo) * se.StepNs
		se.Values = se.Values[lo:hi:hi]
	}
	return true
}

func seriesSpan(s *Snapshot) (lo, hi int64, values int) {
	for i, se := range s.Series {
		if i == 0 {
			lo, hi = se.StartNs, se.End()
		}
		lo, hi = min(lo, se.StartNs), max(hi, se.End())
		values += len(se.Values)
	}
	return
}

func noteSeriesWindow(orig, cur *Snapshot) string {
	olo, ohi, _ := seriesSpan(orig)
	lo, hi, _ := seriesSpan(cur)
	if len(cur.Series) == 0 || olo == lo && ohi == hi {
		return ""
	}
	return fmt.Sprintf("cropped the counter series to %s..%s around the onset (they covered %s..%s)", offset(lo), offset(hi), offset(olo), offset(ohi))
}

func trimSeriesResolution(s *Snapshot, _ int) bool {
	changed := false
	for i := range s.Series {
		se := &s.Series[i]
		if len(se.Values) <= minResolutionValues || se.StepNs > maxStepNs/2 {
			continue
		}
		// Counts per step add up: a pair of steps holds their sum.
		out := make([]float64, (len(se.Values)+1)/2)
		for j, v := range se.Values {
			out[j/2] += v
		}
		se.Values, se.StepNs = out, se.StepNs*2
		changed = true
	}
	return changed
}

func noteSeriesResolution(orig, cur *Snapshot) string {
	steps := func(s *Snapshot) map[int64]bool {
		m := map[int64]bool{}
		for _, se := range s.Series {
			m[se.StepNs] = true
		}
		return m
	}
	o, c := steps(orig), steps(cur)
	if len(cur.Series) == 0 || mapsEqual(o, c) {
		return ""
	}
	return fmt.Sprintf("summed adjacent steps of the counter series: steps now %s (were %s)", durations(c), durations(o))
}

func trimCoScheduling(s *Snapshot, _ int) bool {
	longest := 0
	for _, c := range s.CoScheduling {
		if c.Overlap != nil {
			longest = max(longest, len(c.Overlap.SMTSibling), len(c.Overlap.SharedLLC))
		}
	}
	if longest == 0 {
		return false
	}
	for i := range s.CoScheduling {
		o := s.CoScheduling[i].Overlap
		if o == nil {
			continue
		}
		if longest <= minResolutionValues {
			s.CoScheduling[i].Overlap = nil
			continue
		}
		// Fractions of a step average over a pair of steps.
		o.SMTSibling, o.SharedLLC = halve(o.SMTSibling), halve(o.SharedLLC)
		o.StepNs *= 2
	}
	return true
}

func halve(fs []float64) []float64 {
	out := make([]float64, (len(fs)+1)/2)
	for j := range out {
		if 2*j+1 < len(fs) {
			out[j] = (fs[2*j] + fs[2*j+1]) / 2
		} else {
			out[j] = fs[2*j]
		}
	}
	return out
}

func noteCoScheduling(orig, cur *Snapshot) string {
	var dropped, coarser int
	var step int64
	for i, c := range cur.CoScheduling {
		o := orig.CoScheduling[i].Overlap
		switch {
		case o == nil:
		case c.Overlap == nil:
			dropped++
		case c.Overlap.StepNs != o.StepNs:
			coarser++
			step = c.Overlap.StepNs
		}
	}
	var parts []string
	if coarser > 0 {
		parts = append(parts, fmt.Sprintf("averaged the overlap time series of %d VMI pairs to steps of %s", coarser, time.Duration(step)))
	}
	if dropped > 0 {
		parts = append(parts, fmt.Sprintf("dropped the overlap time series of %d VMI pairs (their totals remain)", dropped))
	}
	return strings.Join(parts, "; ")
}

func trimDetector(s *Snapshot, level int) bool {
	keep := detectorKeep[level]
	changed := false
	for _, a := range []*Correlogram{s.Detector.Autocorrelation, s.Detector.CrossCorrelation} {
		if a == nil || len(a.Values) <= keep {
			continue
		}
		peak := int((a.PeakLagNs - a.FirstLagNs) / a.LagStepNs)
		if peak >= 0 && peak < keep*3/4 {
			// The curve past a few periods adds little: cut its tail.
			a.Values = a.Values[:keep:keep]
		} else {
			f := (len(a.Values) + keep - 1) / keep
			out := make([]float64, 0, keep)
			for i := 0; i < len(a.Values); i += f {
				out = append(out, a.Values[i])
			}
			a.Values, a.LagStepNs = out, a.LagStepNs*int64(f)
		}
		changed = true
	}
	for i := range s.Detector.Bursts {
		b := &s.Detector.Bursts[i]
		if len(b.TimesNs) > keep {
			lo, hi := window(len(b.TimesNs), keep, func(j int) int64 { return b.TimesNs[j] })
			b.TimesNs = b.TimesNs[lo:hi:hi]
			b.PeriodsNs = b.PeriodsNs[min(lo, len(b.PeriodsNs)):min(max(hi-1, lo), len(b.PeriodsNs))]
			changed = true
		}
		if len(b.PeriodsNs) > keep {
			b.PeriodsNs = b.PeriodsNs[:keep:keep]
			changed = true
		}
	}
	for i := range s.Detector.PhaseCorrelation {
		c := &s.Detector.PhaseCorrelation[i]
		for _, l := range []*[]Interval{&c.Phases, &c.Anomalies} {
			if len(*l) > keep {
				iv := *l
				lo, hi := window(len(iv), keep, func(j int) int64 { return iv[j].StartNs })
				*l = iv[lo:hi:hi]
				changed = true
			}
		}
	}
	return changed
}

func detectorCounts(s *Snapshot) (lags, bursts, intervals int) {
	for _, a := range []*Correlogram{s.Detector.Autocorrelation, s.Detector.CrossCorrelation} {
		if a != nil {
			lags += len(a.Values)
		}
	}
	for _, b := range s.Detector.Bursts {
		bursts += len(b.TimesNs)
	}
	for _, c := range s.Detector.PhaseCorrelation {
		intervals += len(c.Phases) + len(c.Anomalies)
	}
	return
}

func noteDetector(orig, cur *Snapshot) string {
	ol, ob, oi := detectorCounts(orig)
	cl, cb, ci := detectorCounts(cur)
	var parts []string
	if cl != ol && cl > 0 {
		parts = append(parts, fmt.Sprintf("kept %d of %d correlation lags, the first ones or every few (the peak figures are exact)", cl, ol))
	}
	if cb != ob && cb > 0 {
		parts = append(parts, fmt.Sprintf("kept %d of %d burst times, those nearest the onset", cb, ob))
	}
	if ci != oi && ci > 0 {
		parts = append(parts, fmt.Sprintf("kept %d of %d phase and anomaly intervals, those nearest the onset", ci, oi))
	}
	return strings.Join(parts, "; ")
}

// primaryEvents are the events the detector worked on; their series go
// last.
func primaryEvents(s *Snapshot) map[v1alpha1.CounterEvent]bool {
	m := map[v1alpha1.CounterEvent]bool{}
	if a := s.Detector.Autocorrelation; a != nil && a.Event != "" {
		m[a.Event] = true
	}
	for _, b := range s.Detector.Bursts {
		if b.Event != "" {
			m[b.Event] = true
		}
	}
	if len(m) == 0 {
		m[v1alpha1.EventLLCMisses] = true
		m[v1alpha1.EventBusLocks] = true
		m[v1alpha1.EventSplitLocks] = true
	}
	return m
}

func trimSeries(s *Snapshot, level int) bool {
	if len(s.Series) == 0 {
		return false
	}
	if level == 1 {
		s.Series = nil
		return true
	}
	keep := primaryEvents(s)
	out := s.Series[:0:0]
	for _, se := range s.Series {
		if keep[se.Event] {
			out = append(out, se)
		}
	}
	changed := len(out) != len(s.Series)
	s.Series = out
	if len(out) == 0 {
		s.Series = nil
	}
	return changed
}

func noteSeries(orig, cur *Snapshot) string {
	if len(cur.Series) == len(orig.Series) {
		return ""
	}
	have := map[string]bool{}
	for _, se := range cur.Series {
		have[se.VMI+" "+string(se.Event)] = true
	}
	var gone []string
	seen := map[string]bool{}
	for _, se := range orig.Series {
		if !have[se.VMI+" "+string(se.Event)] && !seen[string(se.Event)] {
			seen[string(se.Event)] = true
			gone = append(gone, string(se.Event))
		}
	}
	return fmt.Sprintf("dropped %d of %d counter series (events %s)", len(orig.Series)-len(cur.Series), len(orig.Series), strings.Join(gone, ", "))
}

func trimAttribution(s *Snapshot, level int) bool {
	keep := programKeep[level]
	changed := false
	for i := range s.Attribution {
		a := &s.Attribution[i]
		if len(a.Programs) > keep {
			a.Programs = a.Programs[:keep:keep]
			changed = true
		}
	}
	return changed
}

func noteAttribution(orig, cur *Snapshot) string {
	count := func(s *Snapshot) (n int) {
		for _, a := range s.Attribution {
			n += len(a.Programs)
		}
		return
	}
	o, c := count(orig), count(cur)
	if o == c || c == 0 {
		return ""
	}
	return fmt.Sprintf("kept the %d most sampled of %d attributed guest programs", c, o)
}

func trimLastResort(s *Snapshot, _ int) bool {
	s.Samples, s.Series, s.Attribution, s.Processes, s.CoScheduling = nil, nil, nil, nil, nil
	for _, a := range []*Correlogram{s.Detector.Autocorrelation, s.Detector.CrossCorrelation} {
		if a != nil {
			a.Values = nil
		}
	}
	for i := range s.Detector.Bursts {
		s.Detector.Bursts[i].TimesNs, s.Detector.Bursts[i].PeriodsNs = nil, nil
	}
	for i := range s.Detector.PhaseCorrelation {
		s.Detector.PhaseCorrelation[i].Phases, s.Detector.PhaseCorrelation[i].Anomalies = nil, nil
	}
	for i := range s.VMIs {
		s.VMIs[i].HostCPUs = nil
	}
	return true
}

func noteLastResort(orig, cur *Snapshot) string {
	var gone []string
	add := func(had bool, what string) {
		if had {
			gone = append(gone, what)
		}
	}
	add(len(orig.Attribution) > 0, "the attribution")
	add(len(orig.Processes) > 0, "the process lists")
	add(len(orig.CoScheduling) > 0, "the co-scheduling figures")
	ol, ob, oi := detectorCounts(orig)
	add(ol+ob+oi > 0, "the detector's curves, burst times and intervals")
	if len(gone) == 0 {
		return "dropped every list"
	}
	return "dropped " + strings.Join(gone, ", ") + "; the detector's scalar figures remain"
}

func trimMinimal(s *Snapshot, _ int) bool {
	short := func(v string) string { return clampString(v, maxNameLen) }
	m := Snapshot{
		Format: s.Format, Version: s.Version, CapturedAt: s.CapturedAt, Onset: s.Onset,
		Finding: FindingRef{
			Namespace: short(s.Finding.Namespace), Name: short(s.Finding.Name), UID: s.Finding.UID,
			Type: s.Finding.Type, Node: short(s.Finding.Node), Detector: short(s.Finding.Detector),
			Severity: s.Finding.Severity, Score: s.Finding.Score,
		},
		Host:     Host{Node: short(s.Host.Node), CPUModel: short(s.Host.CPUModel), HardwareCounters: s.Host.HardwareCounters},
		Detector: Detector{Name: s.Detector.Name, Score: s.Detector.Score},
	}
	for _, v := range s.VMIs {
		m.VMIs = append(m.VMIs, VMI{Namespace: short(v.Namespace), Name: short(v.Name), UID: types.UID(short(string(v.UID))), Role: v.Role})
	}
	*s = m
	return true
}

func noteMinimal(_, _ *Snapshot) string {
	return "dropped everything but the finding, the VMIs' names and roles, the host's node and CPU, and the detector's name and score"
}

// offset formats a nanosecond offset from the onset, e.g. -1.5s or +20ms.
func offset(ns int64) string {
	d := time.Duration(ns)
	if d >= 0 {
		return "+" + d.String()
	}
	return d.String()
}

func durations(m map[int64]bool) string {
	ks := make([]int64, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	parts := make([]string, len(ks))
	for i, k := range ks {
		parts[i] = time.Duration(k).String()
	}
	return strings.Join(parts, ", ")
}

func mapsEqual(a, b map[int64]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}
