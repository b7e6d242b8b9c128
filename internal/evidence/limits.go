package evidence

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Size limits. A stored snapshot is at most MaxCompressedBytes of gzip and
// at most MaxJSONBytes once decompressed; Encode trims until both hold and
// Decode refuses anything larger (a small gzip stream can inflate to
// gigabytes).
const (
	MaxCompressedBytes = 256 << 10
	MaxJSONBytes       = 8 << 20
	// MaxRefTrimmed bounds the one-line trimming summary in a reference.
	MaxRefTrimmed = 1024
)

// Hard caps on every list and string. Encode clamps to them (with a note);
// Decode refuses a snapshot beyond them, so every reader can trust them.
const (
	maxVMIs          = 32
	maxHostCPUs      = 1024
	maxSeries        = 256
	maxPoints        = 1 << 16 // values in one series, curve or overlap
	maxSamples       = 1 << 16
	maxAttribution   = 32
	maxPrograms      = 64
	maxProcessLists  = 32
	maxProcesses     = 4096
	maxLibraries     = 256
	maxBurstTrains   = 32
	maxPhaseCorrs    = 32
	maxIntervals     = 1 << 16
	maxEventRates    = 64
	maxFigures       = 64
	maxCoScheduling  = 528 // every pair of maxVMIs
	maxUnavailable   = 32
	maxTrimNotes     = 64
	maxGaps          = 64
	maxNameLen       = 253
	maxCommLen       = 64
	maxPathLen       = 4096
	maxSymbolLen     = 512
	maxTextLen       = 1024
	maxEventLen      = 63
	maxOffsetNs      = int64(24 * time.Hour) // |any ...Ns offset|
	maxStepNs        = int64(time.Hour)
	maxWindowNs      = int64(48 * time.Hour)
	maxVCPUs         = 4096
	maxPID           = 1 << 22 // Linux PID_MAX_LIMIT
	maxFigureNameLen = 63
)

var eventName = regexp.MustCompile(`^[a-z][a-z0-9_.]*$`)

// Validate reports whether s is a well-formed snapshot within every cap; the
// error names the first offending field. Decode calls it: a snapshot comes
// from the API, where a compromised agent may have written anything.
func (s *Snapshot) Validate() error {
	v := validator{}
	v.check(s.Format == Format, "format", "is %q, want %q", s.Format, Format)
	v.check(s.Version >= 1 && s.Version <= Version, "version", "is %d; this sidewatch reads versions 1 to %d (upgrade sidewatch to read newer snapshots)", s.Version, Version)
	v.str("finding.namespace", s.Finding.Namespace, maxNameLen)
	v.str("finding.name", s.Finding.Name, maxNameLen)
	v.str("finding.uid", string(s.Finding.UID), maxNameLen)
	v.str("finding.type", string(s.Finding.Type), maxEventLen)
	v.str("finding.node", s.Finding.Node, maxNameLen)
	v.str("finding.detector", s.Finding.Detector, maxEventLen)
	v.str("finding.severity", string(s.Finding.Severity), maxEventLen)
	v.num("finding.score", s.Finding.Score)

	v.count("vmis", len(s.VMIs), maxVMIs)
	for i, m := range s.VMIs {
		p := fmt.Sprintf("vmis[%d]", i)
		v.str(p+".namespace", m.Namespace, maxNameLen)
		v.str(p+".name", m.Name, maxNameLen)
		v.str(p+".uid", string(m.UID), maxNameLen)
		v.str(p+".role", m.Role, maxEventLen)
		v.check(m.VCPUs >= 0 && m.VCPUs <= maxVCPUs, p+".vcpus", "is %d, want 0..%d", m.VCPUs, maxVCPUs)
		v.count(p+".hostCPUs", len(m.HostCPUs), maxHostCPUs)
	}

	h := s.Host
	for _, f := range []struct{ name, val string }{{"node", h.Node}, {"cpuModel", h.CPUModel}, {"vendor", h.Vendor},
		{"microcode", h.Microcode}, {"kernelRelease", h.KernelRelease}, {"smt", h.SMT}, {"agentVersion", h.AgentVersion}} {
		v.str("host."+f.name, f.val, maxTextLen)
	}
	v.count("host.unavailableSignals", len(h.UnavailableSignals), maxUnavailable)
	for i, u := range h.UnavailableSignals {
		v.str(fmt.Sprintf("host.unavailableSignals[%d]", i), u, maxTextLen)
	}

	v.count("series", len(s.Series), maxSeries)
	for i, se := range s.Series {
		p := fmt.Sprintf("series[%d]", i)
		v.str(p+".vmi", se.VMI, maxTextLen)
		v.event(p+".event", string(se.Event))
		v.timeline(p, se.StartNs, se.StepNs, len(se.Values))
		v.nums(p+".values", se.Values)
	}

	d := s.Detector
	v.str("detector.name", d.Name, maxEventLen)
	v.num("detector.score", d.Score)
	v.correlogram("detector.autocorrelation", d.Autocorrelation)
	v.correlogram("detector.crossCorrelation", d.CrossCorrelation)
	v.count("detector.bursts", len(d.Bursts), maxBurstTrains)
	for i, b := range d.Bursts {
		p := fmt.Sprintf("detector.bursts[%d]", i)
		v.str(p+".vmi", b.VMI, maxTextLen)
		v.event(p+".event", string(b.Event))
		v.count(p+".timesNs", len(b.TimesNs), maxIntervals)
		v.count(p+".periodsNs", len(b.PeriodsNs), maxIntervals)
		for j, t := range b.TimesNs {
			v.offset(fmt.Sprintf("%s.timesNs[%d]", p, j), t)
		}
		for j, t := range b.PeriodsNs {
			v.check(t >= 0 && t <= maxWindowNs, fmt.Sprintf("%s.periodsNs[%d]", p, j), "is %d, want 0..%d", t, maxWindowNs)
		}
		v.check(b.MeanPeriodNs >= 0 && b.MeanPeriodNs <= maxWindowNs, p+".meanPeriodNs", "is %d, want 0..%d", b.MeanPeriodNs, maxWindowNs)
		v.num(p+".locksPerSecond", b.LocksPerSecond)
	}
	v.count("detector.phaseCorrelation", len(d.PhaseCorrelation), maxPhaseCorrs)
	for i, c := range d.PhaseCorrelation {
		p := fmt.Sprintf("detector.phaseCorrelation[%d]", i)
		v.str(p+".suspect", c.Suspect, maxTextLen)
		v.str(p+".victim", c.Victim, maxTextLen)
		v.str(p+".signature", c.Signature, maxEventLen)
		v.num(p+".coefficient", c.Coefficient)
		v.intervals(p+".phases", c.Phases)
		v.intervals(p+".anomalies", c.Anomalies)
	}
	v.count("detector.eventRates", len(d.EventRates), maxEventRates)
	for i, r := range d.EventRates {
		p := fmt.Sprintf("detector.eventRates[%d]", i)
		v.str(p+".vmi", r.VMI, maxTextLen)
		v.event(p+".event", string(r.Event))
		v.num(p+".perSecond", r.PerSecond)
	}
	v.count("detector.figures", len(d.Figures), maxFigures)
	for k, f := range d.Figures {
		v.check(k != "" && len(k) <= maxFigureNameLen && utf8.ValidString(k), "detector.figures", "has a figure name %q; want 1 to %d bytes of UTF-8", clampString(k, 80), maxFigureNameLen)
		v.num("detector.figures."+clampString(k, maxFigureNameLen), f)
	}

	v.count("samples", len(s.Samples), maxSamples)
	for i, sm := range s.Samples {
		p := fmt.Sprintf("samples[%d]", i)
		v.str(p+".vmi", sm.VMI, maxTextLen)
		v.check(sm.VCPU >= 0 && sm.VCPU < maxVCPUs, p+".vcpu", "is %d, want 0..%d", sm.VCPU, maxVCPUs-1)
		v.offset(p+".tNs", sm.TNs)
		v.event(p+".event", string(sm.Event))
		v.check(sm.PID >= 0 && sm.PID <= maxPID, p+".pid", "is %d, want 0..%d", sm.PID, maxPID)
		v.str(p+".comm", sm.Comm, maxCommLen)
		v.str(p+".path", sm.Path, maxPathLen)
		v.str(p+".symbol", sm.Symbol, maxSymbolLen)
		v.str(p+".via", sm.Via, maxEventLen)
	}
	v.count("attribution", len(s.Attribution), maxAttribution)
	for i, a := range s.Attribution {
		p := fmt.Sprintf("attribution[%d]", i)
		v.str(p+".vmi", a.VMI, maxTextLen)
		v.count(p+".programs", len(a.Programs), maxPrograms)
		v.check(a.Unattributed >= 0, p+".unattributed", "is negative")
		for j, g := range a.Programs {
			q := fmt.Sprintf("%s.programs[%d]", p, j)
			v.check(g.PID >= 0 && g.PID <= maxPID, q+".pid", "is %d, want 0..%d", g.PID, maxPID)
			v.str(q+".comm", g.Comm, maxCommLen)
			v.str(q+".path", g.Path, maxPathLen)
			v.str(q+".offset", g.Offset, 18)
			v.str(q+".symbol", g.Symbol, maxSymbolLen)
			v.check(g.Samples >= 0, q+".samples", "is negative")
		}
	}
	v.count("processes", len(s.Processes), maxProcessLists)
	for i, l := range s.Processes {
		p := fmt.Sprintf("processes[%d]", i)
		v.str(p+".vmi", l.VMI, maxTextLen)
		v.str(p+".error", l.Error, maxTextLen)
		v.count(p+".processes", len(l.Processes), maxProcesses)
		v.check(l.Total >= 0, p+".total", "is negative")
		for j, pr := range l.Processes {
			q := fmt.Sprintf("%s.processes[%d]", p, j)
			v.check(pr.PID >= 0 && pr.PID <= maxPID && pr.PPID >= 0 && pr.PPID <= maxPID, q, "pid %d or ppid %d out of 0..%d", pr.PID, pr.PPID, maxPID)
			v.str(q+".comm", pr.Comm, maxCommLen)
			v.str(q+".exe", pr.Exe, maxPathLen)
			v.count(q+".libraries", len(pr.Libraries), maxLibraries)
			for k, lib := range pr.Libraries {
				v.str(fmt.Sprintf("%s.libraries[%d]", q, k), lib, maxPathLen)
			}
		}
	}
	v.count("coScheduling", len(s.CoScheduling), maxCoScheduling)
	for i, c := range s.CoScheduling {
		p := fmt.Sprintf("coScheduling[%d]", i)
		v.str(p+".a", c.A, maxTextLen)
		v.str(p+".b", c.B, maxTextLen)
		v.check(c.WindowNs >= 0 && c.WindowNs <= maxWindowNs, p+".windowNs", "is %d, want 0..%d", c.WindowNs, maxWindowNs)
		v.check(c.SMTSiblingNs >= 0 && c.SMTSiblingNs <= c.WindowNs, p+".smtSiblingNs", "is %d, want 0..windowNs (%d)", c.SMTSiblingNs, c.WindowNs)
		v.check(c.SharedLLCNs >= 0 && c.SharedLLCNs <= c.WindowNs, p+".sharedLLCNs", "is %d, want 0..windowNs (%d)", c.SharedLLCNs, c.WindowNs)
		v.check(c.Handovers >= 0, p+".handovers", "is negative")
		if o := c.Overlap; o != nil {
			v.timeline(p+".overlap", o.StartNs, o.StepNs, max(len(o.SMTSibling), len(o.SharedLLC)))
			v.fractions(p+".overlap.smtSibling", o.SMTSibling)
			v.fractions(p+".overlap.sharedLLC", o.SharedLLC)
		}
	}
	v.count("gaps", len(s.Gaps), maxGaps)
	for i, g := range s.Gaps {
		v.str(fmt.Sprintf("gaps[%d].part", i), g.Part, maxEventLen)
		v.str(fmt.Sprintf("gaps[%d].vmi", i), g.VMI, maxTextLen)
		v.str(fmt.Sprintf("gaps[%d].reason", i), g.Reason, maxTextLen)
	}
	v.count("trimmed", len(s.Trimmed), maxTrimNotes)
	for i, n := range s.Trimmed {
		v.str(fmt.Sprintf("trimmed[%d].stage", i), n.Stage, maxEventLen)
		v.str(fmt.Sprintf("trimmed[%d].detail", i), n.Detail, maxTextLen)
	}
	return v.err
}

// validator keeps the first error.
type validator struct{ err error }

func (v *validator) check(ok bool, field, format string, args ...any) {
	if !ok && v.err == nil {
		v.err = fmt.Errorf("snapshot field %s %s", field, fmt.Sprintf(format, args...))
	}
}

func (v *validator) str(field, s string, n int) {
	v.check(len(s) <= n, field, "is %d bytes long, the limit is %d", len(s), n)
	v.check(utf8.ValidString(s), field, "is not valid UTF-8")
}

func (v *validator) count(field string, n, limit int) {
	v.check(n <= limit, field, "has %d entries, the limit is %d", n, limit)
}

func (v *validator) num(field string, f float64) {
	v.check(!math.IsNaN(f) && !math.IsInf(f, 0), field, "is not a finite number")
}

func (v *validator) nums(field string, fs []float64) {
	for i, f := range fs {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			v.check(false, fmt.Sprintf("%s[%d]", field, i), "is not a finite number")
			return
		}
	}
}

func (v *validator) fractions(field string, fs []float64) {
	v.count(field, len(fs), maxPoints)
	for i, f := range fs {
		if !(f >= 0 && f <= 1) {
			v.check(false, fmt.Sprintf("%s[%d]", field, i), "is %v, want a fraction 0..1", f)
			return
		}
	}
}

func (v *validator) event(field, e string) {
	v.check(e == "" || len(e) <= maxEventLen && eventName.MatchString(e), field, "%q is not an event name (lower case letters, digits, _ and ., at most %d bytes)", clampString(e, 80), maxEventLen)
}

func (v *validator) offset(field string, ns int64) {
	v.check(ns >= -maxOffsetNs && ns <= maxOffsetNs, field, "is %d ns from the onset; offsets are limited to ±24h", ns)
}

// timeline checks a regular time axis: a positive step and every point
// within ±24h of the onset.
func (v *validator) timeline(field string, startNs, stepNs int64, n int) {
	v.check(stepNs >= 1 && stepNs <= maxStepNs, field+".stepNs", "is %d, want 1ns..1h", stepNs)
	v.count(field+" values", n, maxPoints)
	v.offset(field+".startNs", startNs)
	if v.err == nil {
		end := startNs + int64(n)*stepNs // no overflow: both factors are bounded
		v.check(end <= maxOffsetNs+maxStepNs, field, "ends %d ns after the onset; offsets are limited to ±24h", end)
	}
}

func (v *validator) correlogram(field string, c *Correlogram) {
	if c == nil {
		return
	}
	v.str(field+".vmi", c.VMI, maxTextLen)
	v.event(field+".event", string(c.Event))
	v.timeline(field, c.FirstLagNs, c.LagStepNs, len(c.Values))
	v.nums(field+".values", c.Values)
	v.offset(field+".peakLagNs", c.PeakLagNs)
	v.num(field+".peakValue", c.PeakValue)
	v.num(field+".threshold", c.Threshold)
}

func (v *validator) intervals(field string, is []Interval) {
	v.count(field, len(is), maxIntervals)
	for i, in := range is {
		p := fmt.Sprintf("%s[%d]", field, i)
		v.offset(p+".startNs", in.StartNs)
		v.offset(p+".endNs", in.EndNs)
		v.check(in.EndNs >= in.StartNs, p, "ends (%d) before it starts (%d)", in.EndNs, in.StartNs)
	}
}

// clampString cuts s to at most n bytes on a rune boundary and replaces
// invalid UTF-8.
func clampString(s string, n int) string {
	if !utf8.ValidString(s) {
		s = toValidUTF8(s)
	}
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

func toValidUTF8(s string) string {
	b := make([]rune, 0, len(s))
	for _, r := range s {
		b = append(b, r) // invalid bytes decode as utf8.RuneError
	}
	return string(b)
}

// errTooLarge is returned by Decode for data beyond the size limits.
var errTooLarge = errors.New("snapshot too large")

// bound clamps a snapshot the agent built to the caps Validate enforces, so
// Encode never produces what Decode refuses. It returns notes for what it
// changed.
func (s *Snapshot) bound() []TrimNote {
	var notes []TrimNote
	clamped := 0
	str := func(p *string, n int) {
		if c := clampString(*p, n); c != *p {
			*p = c
			clamped++
		}
	}
	nonFinite := 0
	nums := func(fs []float64) {
		for i, f := range fs {
			if math.IsNaN(f) || math.IsInf(f, 0) {
				fs[i] = 0
				nonFinite++
			}
		}
	}
	num := func(f *float64) {
		if math.IsNaN(*f) || math.IsInf(*f, 0) {
			*f = 0
			nonFinite++
		}
	}
	capped := []string{}
	capList := func(name string, n, limit int) int {
		if n > limit {
			capped = append(capped, fmt.Sprintf("%s %d of %d", name, limit, n))
			return limit
		}
		return n
	}
	uid := func(u *types.UID) {
		if c := types.UID(clampString(string(*u), maxNameLen)); c != *u {
			*u = c
			clamped++
		}
	}
	renamed := 0
	event := func(e *v1alpha1.CounterEvent) {
		if c := sanitizeEvent(*e); c != *e {
			*e = c
			renamed++
		}
	}
	badTime := 0
	offset := func(p *int64) {
		if *p > maxOffsetNs {
			*p = maxOffsetNs
			badTime++
		} else if *p < -maxOffsetNs {
			*p = -maxOffsetNs
			badTime++
		}
	}
	axis := func(start, step *int64, n *int) {
		offset(start)
		if *step < 1 || *step > maxStepNs {
			*step = min(max(*step, 1), maxStepNs)
			badTime++
		}
		if *n > maxPoints {
			*n = maxPoints
		}
		if end := *start + int64(*n)*(*step); end > maxOffsetNs+maxStepNs {
			*n = int((maxOffsetNs + maxStepNs - *start) / *step)
			badTime++
		}
	}

	str(&s.Finding.Namespace, maxNameLen)
	str(&s.Finding.Name, maxNameLen)
	str(&s.Finding.Node, maxNameLen)
	str(&s.Finding.Detector, maxEventLen)
	uid(&s.Finding.UID)
	s.Finding.Type = v1alpha1.ThreatType(clampString(string(s.Finding.Type), maxEventLen))
	s.Finding.Severity = v1alpha1.Severity(clampString(string(s.Finding.Severity), maxEventLen))
	num(&s.Finding.Score)
	s.VMIs = s.VMIs[:capList("vmis", len(s.VMIs), maxVMIs)]
	for i := range s.VMIs {
		m := &s.VMIs[i]
		str(&m.Namespace, maxNameLen)
		str(&m.Name, maxNameLen)
		str(&m.Role, maxEventLen)
		uid(&m.UID)
		m.VCPUs = min(max(m.VCPUs, 0), maxVCPUs)
		m.HostCPUs = m.HostCPUs[:capList("hostCPUs", len(m.HostCPUs), maxHostCPUs)]
	}
	h := &s.Host
	for _, p := range []*string{&h.Node, &h.CPUModel, &h.Vendor, &h.Microcode, &h.KernelRelease, &h.SMT, &h.AgentVersion} {
		str(p, maxTextLen)
	}
	h.UnavailableSignals = h.UnavailableSignals[:capList("unavailable signals", len(h.UnavailableSignals), maxUnavailable)]
	for i := range h.UnavailableSignals {
		str(&h.UnavailableSignals[i], maxTextLen)
	}
	s.Series = s.Series[:capList("series", len(s.Series), maxSeries)]
	for i := range s.Series {
		se := &s.Series[i]
		str(&se.VMI, maxTextLen)
		event(&se.Event)
		n := len(se.Values)
		capList("values of series "+se.VMI+" "+string(se.Event), n, maxPoints)
		axis(&se.StartNs, &se.StepNs, &n)
		se.Values = se.Values[:max(n, 0)]
		nums(se.Values)
	}
	d := &s.Detector
	str(&d.Name, maxEventLen)
	num(&d.Score)
	for _, a := range []*Correlogram{d.Autocorrelation, d.CrossCorrelation} {
		if a == nil {
			continue
		}
		str(&a.VMI, maxTextLen)
		event(&a.Event)
		n := len(a.Values)
		capList("correlogram lags", n, maxPoints)
		axis(&a.FirstLagNs, &a.LagStepNs, &n)
		a.Values = a.Values[:max(n, 0)]
		nums(a.Values)
		offset(&a.PeakLagNs)
		num(&a.PeakValue)
		num(&a.Threshold)
	}
	d.Bursts = d.Bursts[:capList("burst trains", len(d.Bursts), maxBurstTrains)]
	for i := range d.Bursts {
		b := &d.Bursts[i]
		str(&b.VMI, maxTextLen)
		event(&b.Event)
		b.TimesNs = b.TimesNs[:capList("burst times", len(b.TimesNs), maxIntervals)]
		b.PeriodsNs = b.PeriodsNs[:capList("burst periods", len(b.PeriodsNs), maxIntervals)]
		for j := range b.TimesNs {
			offset(&b.TimesNs[j])
		}
		for j := range b.PeriodsNs {
			b.PeriodsNs[j] = min(max(b.PeriodsNs[j], 0), maxWindowNs)
		}
		b.MeanPeriodNs = min(max(b.MeanPeriodNs, 0), maxWindowNs)
		num(&b.LocksPerSecond)
	}
	d.PhaseCorrelation = d.PhaseCorrelation[:capList("phase correlations", len(d.PhaseCorrelation), maxPhaseCorrs)]
	for i := range d.PhaseCorrelation {
		c := &d.PhaseCorrelation[i]
		str(&c.Suspect, maxTextLen)
		str(&c.Victim, maxTextLen)
		str(&c.Signature, maxEventLen)
		num(&c.Coefficient)
		for _, l := range []*[]Interval{&c.Phases, &c.Anomalies} {
			*l = (*l)[:capList("intervals", len(*l), maxIntervals)]
			for j := range *l {
				in := &(*l)[j]
				offset(&in.StartNs)
				offset(&in.EndNs)
				if in.EndNs < in.StartNs {
					in.EndNs = in.StartNs
					badTime++
				}
			}
		}
	}
	d.EventRates = d.EventRates[:capList("event rates", len(d.EventRates), maxEventRates)]
	for i := range d.EventRates {
		str(&d.EventRates[i].VMI, maxTextLen)
		event(&d.EventRates[i].Event)
		num(&d.EventRates[i].PerSecond)
	}
	if len(d.Figures) > 0 {
		keys := make([]string, 0, len(d.Figures))
		for k := range d.Figures {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		figs := make(map[string]float64, min(len(keys), maxFigures))
		for _, k := range keys {
			name := clampString(k, maxFigureNameLen)
			if name == "" || len(figs) == maxFigures {
				continue
			}
			f := d.Figures[k]
			if math.IsNaN(f) || math.IsInf(f, 0) {
				f = 0
				nonFinite++
			}
			figs[name] = f
		}
		capList("figures", len(keys), maxFigures)
		d.Figures = figs
	}
	s.Samples = s.Samples[:capList("samples", len(s.Samples), maxSamples)]
	for i := range s.Samples {
		sm := &s.Samples[i]
		str(&sm.VMI, maxTextLen)
		event(&sm.Event)
		sm.VCPU = min(max(sm.VCPU, 0), maxVCPUs-1)
		offset(&sm.TNs)
		sm.PID = min(max(sm.PID, 0), maxPID)
		str(&sm.Comm, maxCommLen)
		str(&sm.Path, maxPathLen)
		str(&sm.Symbol, maxSymbolLen)
		str(&sm.Via, maxEventLen)
	}
	s.Attribution = s.Attribution[:capList("attributed VMIs", len(s.Attribution), maxAttribution)]
	for i := range s.Attribution {
		a := &s.Attribution[i]
		str(&a.VMI, maxTextLen)
		a.Programs = a.Programs[:capList("attributed programs", len(a.Programs), maxPrograms)]
		a.Unattributed = max(a.Unattributed, 0)
		for j := range a.Programs {
			g := &a.Programs[j]
			g.PID = min(max(g.PID, 0), maxPID)
			str(&g.Comm, maxCommLen)
			str(&g.Path, maxPathLen)
			str(&g.Offset, 18)
			str(&g.Symbol, maxSymbolLen)
			g.Samples = max(g.Samples, 0)
		}
	}
	s.Processes = s.Processes[:capList("process lists", len(s.Processes), maxProcessLists)]
	for i := range s.Processes {
		l := &s.Processes[i]
		str(&l.VMI, maxTextLen)
		str(&l.Error, maxTextLen)
		l.Total = max(l.Total, len(l.Processes))
		l.Processes = l.Processes[:capList("processes", len(l.Processes), maxProcesses)]
		for j := range l.Processes {
			pr := &l.Processes[j]
			pr.PID = min(max(pr.PID, 0), maxPID)
			pr.PPID = min(max(pr.PPID, 0), maxPID)
			str(&pr.Comm, maxCommLen)
			str(&pr.Exe, maxPathLen)
			pr.Libraries = pr.Libraries[:capList("libraries", len(pr.Libraries), maxLibraries)]
			for k := range pr.Libraries {
				str(&pr.Libraries[k], maxPathLen)
			}
		}
	}
	s.CoScheduling = s.CoScheduling[:capList("co-scheduling pairs", len(s.CoScheduling), maxCoScheduling)]
	for i := range s.CoScheduling {
		c := &s.CoScheduling[i]
		str(&c.A, maxTextLen)
		str(&c.B, maxTextLen)
		c.WindowNs = min(max(c.WindowNs, 0), maxWindowNs)
		c.SMTSiblingNs = min(max(c.SMTSiblingNs, 0), c.WindowNs)
		c.SharedLLCNs = min(max(c.SharedLLCNs, 0), c.WindowNs)
		c.Handovers = max(c.Handovers, 0)
		if o := c.Overlap; o != nil {
			for _, l := range []*[]float64{&o.SMTSibling, &o.SharedLLC} {
				n := len(*l)
				axis(&o.StartNs, &o.StepNs, &n)
				*l = (*l)[:max(n, 0)]
				for j, f := range *l {
					if !(f >= 0 && f <= 1) {
						if !(f >= 0) {
							(*l)[j] = 0
						} else {
							(*l)[j] = 1
						}
						nonFinite++
					}
				}
			}
		}
	}
	s.Gaps = s.Gaps[:capList("gaps", len(s.Gaps), maxGaps)]
	for i := range s.Gaps {
		str(&s.Gaps[i].Part, maxEventLen)
		str(&s.Gaps[i].VMI, maxTextLen)
		str(&s.Gaps[i].Reason, maxTextLen)
	}

	if clamped > 0 {
		notes = append(notes, TrimNote{Stage: "limits", Detail: fmt.Sprintf("cut %d strings to their length limits", clamped)})
	}
	if len(capped) > 0 {
		notes = append(notes, TrimNote{Stage: "limits", Detail: clampString("capped lists: kept "+joinFirst(capped, 8), maxTextLen)})
	}
	if renamed > 0 {
		notes = append(notes, TrimNote{Stage: "limits", Detail: fmt.Sprintf("rewrote %d event names to lower case letters, digits, _ and .", renamed)})
	}
	if nonFinite > 0 {
		notes = append(notes, TrimNote{Stage: "limits", Detail: fmt.Sprintf("replaced %d non-finite or out-of-range numbers by 0 (or 1 for fractions above 1)", nonFinite)})
	}
	if badTime > 0 {
		notes = append(notes, TrimNote{Stage: "limits", Detail: fmt.Sprintf("clamped %d times or steps to ±24h of the onset (steps to 1ns..1h)", badTime)})
	}
	return notes
}

func joinFirst(items []string, n int) string {
	out := ""
	for i, it := range items {
		if i == n {
			return out + fmt.Sprintf(", and %d more", len(items)-n)
		}
		if i > 0 {
			out += ", "
		}
		out += it
	}
	return out
}

// sanitizeEvent maps any string onto an event name Validate accepts.
func sanitizeEvent(e v1alpha1.CounterEvent) v1alpha1.CounterEvent {
	if e == "" || len(e) <= maxEventLen && eventName.MatchString(string(e)) {
		return e
	}
	b := []byte(strings.ToLower(string(e)))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.') {
			b[i] = '_'
		}
	}
	if len(b) > maxEventLen {
		b = b[:maxEventLen]
	}
	if b[0] < 'a' || b[0] > 'z' {
		b[0] = 'x'
	}
	return v1alpha1.CounterEvent(b)
}
