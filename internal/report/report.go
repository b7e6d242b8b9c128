// Package report renders the incident report of a ThreatFinding: when it
// happened (timeline), who and what was involved (victim, suspects, guest
// processes and libraries), what sidewatch did (actions), the detector's
// figures and plots of the evidence, as Markdown for a terminal and as one
// self-contained HTML file with inline SVG plots and no script.
//
// Build assembles the report from the finding, its evidence snapshot (when
// there is one) and its Kubernetes Events; Markdown and HTML render it.
// Everything that comes from guest memory or the cluster is escaped for
// the output it goes to: control characters never reach the terminal, and
// markup never reaches the HTML.
package report

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
)

// Input is what a report is made from.
type Input struct {
	// Finding is required.
	Finding *v1alpha1.ThreatFinding
	// Snapshot is the finding's evidence; nil when there is none, with
	// SnapshotNote saying why.
	Snapshot     *evidence.Snapshot
	SnapshotNote string
	// Events are the Kubernetes Events about the finding, its migration
	// and its victim; EventsNote says why they are missing, if they are.
	Events     []corev1.Event
	EventsNote string
	// Source says where the data came from (a cluster context, files).
	Source string
	// GeneratedAt stamps the report.
	GeneratedAt time.Time
}

// Fact is one labelled value.
type Fact struct{ Name, Value string }

// Entry is one line of the timeline.
type Entry struct {
	Time time.Time
	// What happened, for a person.
	What string
	// Source is where the report learned it: agent, operator, event,
	// evidence.
	Source  string
	Warning bool
}

// Party is the victim or a suspect.
type Party struct {
	Key   string // namespace/name
	UID   string
	Role  string
	Score *float64
	VCPUs int32
	// HostCPUs lists the host CPUs the vCPU threads ran on.
	HostCPUs []int32
	// Programs is what introspection attributed samples to, most first.
	Programs     []v1alpha1.GuestProgram
	Unattributed int64
	// Processes is the guest's process list when the snapshot was taken.
	Processes      []evidence.Process
	ProcessesTotal int
	ProcessesError string
	// Sampled marks the pids that sampled addresses were attributed to.
	Sampled map[int32]bool
	Colour  string
	// CoScheduling is a suspect's hardware sharing with the victim over
	// the evidence window and the weight it put on its score.
	CoScheduling *v1alpha1.SuspectCoScheduling
}

// Sharing says in words how much a suspect shared the victim's hardware.
func (p Party) Sharing() string {
	c := p.CoScheduling
	if c == nil {
		return ""
	}
	return fmt.Sprintf("shared the victim's last-level cache %.1f%% and a core (SMT) %.1f%% of %s, %d handovers on one CPU; score weight %.2f",
		100*c.SharedLLC, 100*c.SMTSiblings, c.Window.Duration, c.Handovers, c.Weight)
}

// Pair is one co-scheduling row.
type Pair struct {
	A, B                  string
	Window                time.Duration
	SMTSibling, SharedLLC time.Duration
	Handovers             int64
}

// Plot is one SVG figure.
type Plot struct {
	// Kind is event-trains, event-trains-overview, autocorrelation,
	// burst-periods, phase-correlation or co-scheduling.
	Kind    string
	Title   string
	Caption string
	SVG     string
}

// Report is a built incident report.
type Report struct {
	Title       string
	Summary     string
	Source      string
	GeneratedAt time.Time
	// Notes are what the reader must know about the report's limits.
	Notes      []string
	Facts      []Fact
	Timeline   []Entry
	Parties    []Party
	Actions    []Fact
	Conditions []metav1.Condition
	Figures    []Fact
	Host       []Fact
	Pairs      []Pair
	Evidence   []Fact
	Trimmed    []string
	Plots      []Plot

	finding  *v1alpha1.ThreatFinding
	snapshot *evidence.Snapshot
	origin   time.Time // time zero of the timeline: spec.firstSeen
}

// Build assembles the report.
func Build(in Input) *Report {
	f := in.Finding
	s := in.Snapshot
	r := &Report{
		Source:      in.Source,
		GeneratedAt: in.GeneratedAt,
		finding:     f,
		snapshot:    s,
		origin:      f.Spec.FirstSeen.Time,
	}
	victim := f.Namespace + "/" + f.Spec.Victim.Name
	r.Title = fmt.Sprintf("Incident report: %s against %s", orUnknown(string(f.Spec.Type)), victim)
	r.Summary = summary(f)

	r.Facts = []Fact{
		{"Finding", f.Namespace + "/" + f.Name},
		{"UID", string(f.UID)},
		{"Type", string(f.Spec.Type)},
		{"Detector", orUnknown(f.Spec.Detector)},
		{"Severity", fmt.Sprintf("%s (score %.2f)", f.Spec.Severity, f.Spec.Score)},
		{"Node", f.Spec.Node},
		{"Victim", victim},
		{"Detections", fmt.Sprintf("%d, %s to %s", max(f.Spec.Detections, 1), stamp(f.Spec.FirstSeen.Time), stamp(f.Spec.LastSeen.Time))},
		{"Phase", orUnknown(string(f.Status.Phase))},
	}
	if f.Spec.Policy != "" || f.Status.Policy != "" {
		r.Facts = append(r.Facts, Fact{"Policy", cmp.Or(f.Status.Policy, f.Spec.Policy)})
	}

	if s == nil {
		note := "No evidence snapshot: the plots, process lists and host facts are missing."
		if in.SnapshotNote != "" {
			note = "No evidence snapshot (" + in.SnapshotNote + "): the plots, process lists and host facts are missing."
		}
		r.Notes = append(r.Notes, note)
	}
	if in.EventsNote != "" {
		r.Notes = append(r.Notes, "Kubernetes Events are missing from the timeline: "+in.EventsNote+".")
	}
	if f.Status.Phase == "" {
		r.Notes = append(r.Notes, "The operator has not acted on this finding yet (it has no status).")
	}
	for _, u := range unavailable(f, s) {
		r.Notes = append(r.Notes, "The node could not provide "+u+".")
	}

	r.Timeline = timeline(f, s, in.Events)
	r.Parties = parties(f, s)
	r.Actions, r.Conditions = actions(f)
	r.Figures = figures(f, s)
	if s != nil {
		r.Host = hostFacts(s.Host)
		for _, c := range s.CoScheduling {
			r.Pairs = append(r.Pairs, Pair{A: c.A, B: c.B, Window: time.Duration(c.WindowNs), SMTSibling: time.Duration(c.SMTSiblingNs), SharedLLC: time.Duration(c.SharedLLCNs), Handovers: c.Handovers})
		}
		for _, n := range s.Trimmed {
			r.Trimmed = append(r.Trimmed, n.Stage+": "+n.Detail)
		}
		r.Plots = plots(r)
	}
	r.Evidence = evidenceFacts(f, s)
	return r
}

func summary(f *v1alpha1.ThreatFinding) string {
	var what string
	switch f.Spec.Type {
	case v1alpha1.CacheCovertChannel:
		what = "two co-located VMIs exchanging data by modulating the shared last-level cache"
	case v1alpha1.CacheSideChannel:
		what = "a co-located VMI spying on the victim through the shared cache while it ran sensitive code"
	case v1alpha1.BusLockCovertChannel:
		what = "two co-located VMIs exchanging data through bursts of memory-bus locks"
	default:
		what = "an attack of an unknown type"
	}
	var sus []string
	for _, s := range f.Spec.Suspects {
		sus = append(sus, fmt.Sprintf("%s/%s (%s, score %.2f)", s.Namespace, s.Name, orUnknown(s.Role), s.Score))
	}
	out := fmt.Sprintf("The sidewatch agent of node %s saw %s, starting %s. Victim: %s/%s.", f.Spec.Node, what, stamp(f.Spec.FirstSeen.Time), f.Namespace, f.Spec.Victim.Name)
	if len(sus) > 0 {
		out += " Suspects: " + strings.Join(sus, ", ") + "."
	}
	if m := f.Status.Migration; m != nil && m.Result == "Succeeded" {
		out += fmt.Sprintf(" The victim was live-migrated from %s to %s.", m.SourceNode, m.TargetNode)
	} else if f.Status.Message != "" {
		out += " " + f.Status.Message
	}
	return out
}

func unavailable(f *v1alpha1.ThreatFinding, s *evidence.Snapshot) []string {
	seen := map[string]bool{}
	var out []string
	add := func(v string) {
		if v != "" && !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	for _, u := range f.Spec.Evidence.UnavailableSignals {
		add(u)
	}
	if s != nil {
		for _, u := range s.Host.UnavailableSignals {
			add(u)
		}
	}
	return out
}

func timeline(f *v1alpha1.ThreatFinding, s *evidence.Snapshot, events []corev1.Event) []Entry {
	var out []Entry
	add := func(t time.Time, source, what string, warning bool) {
		if !t.IsZero() {
			out = append(out, Entry{Time: t, What: what, Source: source, Warning: warning})
		}
	}
	add(f.Spec.FirstSeen.Time, "agent", fmt.Sprintf("First evidence: %s crossed its threshold on node %s", orUnknown(f.Spec.Detector), f.Spec.Node), true)
	if s != nil && !s.Onset.IsZero() && absDur(s.Onset.Sub(f.Spec.FirstSeen.Time)) >= time.Second {
		add(s.Onset, "evidence", "Onset of the evidence snapshot", false)
	}
	add(f.CreationTimestamp.Time, "agent", fmt.Sprintf("Finding created by the agent of node %s (severity %s)", f.Spec.Node, f.Spec.Severity), false)
	if s != nil {
		add(s.CapturedAt, "evidence", "Evidence snapshot captured", false)
	}
	if f.Spec.Detections > 1 && !f.Spec.LastSeen.Equal(&f.Spec.FirstSeen) {
		add(f.Spec.LastSeen.Time, "agent", fmt.Sprintf("Last detection merged into the finding (%d in all)", f.Spec.Detections), false)
	}
	for _, c := range f.Status.Conditions {
		msg := fmt.Sprintf("%s=%s (%s)", c.Type, c.Status, c.Reason)
		if c.Message != "" {
			msg += ": " + c.Message
		}
		add(c.LastTransitionTime.Time, "operator", msg, false)
	}
	if m := f.Status.Migration; m != nil {
		if m.StartTime != nil {
			add(m.StartTime.Time, "operator", fmt.Sprintf("Migration %s started (attempt %d), moving the victim off %s", orUnknown(m.Name), max(m.Attempts, 1), orUnknown(m.SourceNode)), false)
		}
		if m.CompletionTime != nil {
			what := fmt.Sprintf("Migration %s finished: %s", orUnknown(m.Name), orUnknown(m.Result))
			if m.Result == "Succeeded" {
				what += fmt.Sprintf("; the victim runs on %s", orUnknown(m.TargetNode))
				if m.Duration != nil {
					what += fmt.Sprintf(" (%s)", m.Duration.Duration)
				}
			}
			add(m.CompletionTime.Time, "operator", what, m.Result == "Failed")
		}
		if m.NextAttemptTime != nil {
			add(m.NextAttemptTime.Time, "operator", "Next migration attempt scheduled", false)
		}
	}
	if f.Status.ResolvedTime != nil {
		add(f.Status.ResolvedTime.Time, "operator", fmt.Sprintf("Finding resolved: %s", f.Status.Phase), false)
	}
	for _, e := range events {
		what := fmt.Sprintf("%s %s: %s", e.InvolvedObject.Kind, e.Reason, e.Message)
		if e.Count > 1 {
			what += fmt.Sprintf(" (%d times)", e.Count)
		}
		add(eventTime(e), "event", what, e.Type == corev1.EventTypeWarning)
	}
	slices.SortStableFunc(out, func(a, b Entry) int { return a.Time.Compare(b.Time) })
	return out
}

// eventTime is when an Event happened: the newest of its timestamps.
func eventTime(e corev1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time
	}
	return e.CreationTimestamp.Time
}

func parties(f *v1alpha1.ThreatFinding, s *evidence.Snapshot) []Party {
	victim := Party{Key: f.Namespace + "/" + f.Spec.Victim.Name, UID: string(f.Spec.Victim.UID), Role: evidence.RoleVictim, Programs: f.Spec.Victim.Guest, Colour: victimColour}
	out := []Party{victim}
	for i, sus := range f.Spec.Suspects {
		out = append(out, Party{Key: sus.Namespace + "/" + sus.Name, UID: string(sus.UID), Role: orUnknown(sus.Role), Score: &sus.Score, Programs: sus.Guest, Colour: palette[i%len(palette)], CoScheduling: sus.CoScheduling})
	}
	if s == nil {
		return out
	}
	// VMIs the snapshot knows that the spec does not name (a suspect
	// dropped from a later detection) still appear.
	for _, v := range s.VMIs {
		if !slices.ContainsFunc(out, func(p Party) bool { return p.Key == v.Key() }) {
			out = append(out, Party{Key: v.Key(), UID: string(v.UID), Role: orUnknown(v.Role), Colour: palette[(len(out)-1)%len(palette)]})
		}
	}
	attribution := s.Attribution
	if len(attribution) == 0 && len(s.Samples) > 0 {
		attribution = evidence.Attribute(s.Samples)
	}
	for i := range out {
		p := &out[i]
		if v, ok := s.VMI(p.Key); ok {
			p.VCPUs, p.HostCPUs = v.VCPUs, v.HostCPUs
			if p.UID == "" {
				p.UID = string(v.UID)
			}
		}
		for _, a := range attribution {
			if a.VMI == p.Key {
				p.Programs, p.Unattributed = a.Programs, a.Unattributed
			}
		}
		p.Sampled = map[int32]bool{}
		for _, g := range p.Programs {
			p.Sampled[g.PID] = true
		}
		for _, l := range s.Processes {
			if l.VMI == p.Key {
				p.Processes, p.ProcessesTotal, p.ProcessesError = l.Processes, max(l.Total, len(l.Processes)), l.Error
			}
		}
	}
	return out
}

func actions(f *v1alpha1.ThreatFinding) ([]Fact, []metav1.Condition) {
	st := f.Status
	if st.Phase == "" && st.Action == "" && st.Migration == nil {
		return nil, nil
	}
	out := []Fact{
		{"Response", orUnknown(string(st.Action))},
		{"Governing policy", orUnknown(st.Policy)},
		{"Phase", orUnknown(string(st.Phase))},
	}
	if st.Message != "" {
		out = append(out, Fact{"Message", st.Message})
	}
	if st.MergedInto != "" {
		out = append(out, Fact{"Merged into", st.MergedInto})
	}
	if m := st.Migration; m != nil {
		out = append(out,
			Fact{"Migration", fmt.Sprintf("%s, attempt %d", orUnknown(m.Name), m.Attempts)},
			Fact{"Moved", fmt.Sprintf("%s → %s", orUnknown(m.SourceNode), orUnknown(m.TargetNode))},
			Fact{"Result", orUnknown(m.Result)},
		)
		if m.Duration != nil {
			out = append(out, Fact{"Migration took", m.Duration.Duration.String()})
		}
		if len(m.ExcludedNodes) > 0 {
			out = append(out, Fact{"Kept off nodes", strings.Join(m.ExcludedNodes, ", ")})
		}
		if m.StartTime != nil && !f.CreationTimestamp.IsZero() {
			out = append(out, Fact{"Finding to migration", m.StartTime.Sub(f.CreationTimestamp.Time).Round(time.Millisecond).String()})
		}
	}
	if st.ResolvedTime != nil {
		out = append(out, Fact{"Resolved", stamp(st.ResolvedTime.Time)})
	}
	return out, st.Conditions
}

func figures(f *v1alpha1.ThreatFinding, s *evidence.Snapshot) []Fact {
	e := f.Spec.Evidence
	var out []Fact
	addF := func(name string, v *float64, format string) {
		if v != nil {
			out = append(out, Fact{name, fmt.Sprintf(format, *v)})
		}
	}
	if e.Window != nil {
		out = append(out, Fact{"Detection window", e.Window.Duration.String()})
	}
	addF("Autocorrelation peak", e.AutocorrelationPeak, "%.3f")
	if e.Period != nil {
		out = append(out, Fact{"Period", e.Period.Duration.String()})
	}
	addF("Bits per second", e.BitsPerSecond, "%.1f")
	addF("Bursts per second", e.BurstsPerSecond, "%.2f")
	addF("Locks per second in bursts", e.LocksPerSecond, "%.0f")
	addF("Correlation with the victim's sensitive phases", e.Correlation, "%.3f")
	addF("Anomaly score (robust σ)", e.AnomalyScore, "%.1f")
	if e.Signature != "" {
		out = append(out, Fact{"Victim signature", e.Signature})
	}
	if e.Samples > 0 {
		out = append(out, Fact{"Samples", fmt.Sprint(e.Samples)})
	}
	rates := e.EventRates
	if s != nil {
		d := s.Detector
		if a := d.Autocorrelation; a != nil {
			out = append(out, Fact{"Autocorrelation (snapshot)", fmt.Sprintf("peak %.3f at lag %s on %s %s (threshold %.2f)", a.PeakValue, time.Duration(a.PeakLagNs), a.VMI, a.Event, a.Threshold)})
		}
		if x := d.CrossCorrelation; x != nil {
			out = append(out, Fact{"Cross-correlation (snapshot)", fmt.Sprintf("peak %.3f at lag %s between %s", x.PeakValue, time.Duration(x.PeakLagNs), strings.ReplaceAll(x.VMI, "+", " and "))})
		}
		for _, b := range d.Bursts {
			out = append(out, Fact{"Bursts (snapshot)", fmt.Sprintf("%s %s: %d bursts, mean period %s, %.0f locks/s inside", b.VMI, b.Event, len(b.TimesNs), time.Duration(b.MeanPeriodNs), b.LocksPerSecond)})
		}
		for _, c := range d.PhaseCorrelation {
			out = append(out, Fact{"Phase correlation (snapshot)", fmt.Sprintf("%s vs %s phases (%s): %.3f over %d phases, %d anomalies", c.Suspect, c.Victim, orUnknown(c.Signature), c.Coefficient, len(c.Phases), len(c.Anomalies))})
		}
		names := make([]string, 0, len(d.Figures))
		for k := range d.Figures {
			names = append(names, k)
		}
		slices.Sort(names)
		for _, k := range names {
			out = append(out, Fact{k, trimZeroG(d.Figures[k])})
		}
		if len(d.EventRates) > 0 {
			rates = d.EventRates
		}
	}
	for _, r := range rates {
		out = append(out, Fact{"Rate " + r.VMI + " " + string(r.Event), compact(r.PerSecond) + "/s"})
	}
	return out
}

func trimZeroG(v float64) string { return strings.TrimSuffix(fmt.Sprintf("%.4g", v), ".0") }

func hostFacts(h evidence.Host) []Fact {
	cpu := h.CPUModel
	if h.Vendor != "" {
		cpu += fmt.Sprintf(" (%s family %d model %d stepping %d)", h.Vendor, h.Family, h.Model, h.Stepping)
	}
	pmu := "yes"
	if !h.HardwareCounters {
		pmu = "no: counter-based detection was blind on this node"
	}
	out := []Fact{
		{"Node", h.Node},
		{"CPU", orUnknown(cpu)},
		{"Microcode", orUnknown(h.Microcode)},
		{"Kernel", orUnknown(h.KernelRelease)},
		{"SMT", orUnknown(h.SMT)},
		{"Logical CPUs / LLC domains", fmt.Sprintf("%d / %d", h.LogicalCPUs, h.LLCDomains)},
		{"Hardware counters", pmu},
		{"Agent", orUnknown(h.AgentVersion)},
	}
	if len(h.UnavailableSignals) > 0 {
		out = append(out, Fact{"Unavailable signals", strings.Join(h.UnavailableSignals, "; ")})
	}
	return out
}

func evidenceFacts(f *v1alpha1.ThreatFinding, s *evidence.Snapshot) []Fact {
	var out []Fact
	if ref := f.Status.Evidence; ref != nil {
		out = append(out, Fact{"ConfigMap", f.Namespace + "/" + ref.ConfigMapName}, Fact{"Compressed size", fmt.Sprintf("%d bytes", ref.Bytes)})
	} else if ref, err := evidence.RefFromAnnotation(f); err == nil && ref != nil {
		out = append(out, Fact{"ConfigMap", f.Namespace + "/" + ref.ConfigMapName}, Fact{"Compressed size", fmt.Sprintf("%d bytes", ref.Bytes)})
	}
	if s != nil {
		out = append(out,
			Fact{"Captured", stamp(s.CapturedAt)},
			Fact{"Format", fmt.Sprintf("%s v%d", s.Format, s.Version)},
			Fact{"Content", fmt.Sprintf("%d series, %d samples, %d process lists, %d co-scheduling pairs", len(s.Series), len(s.Samples), len(s.Processes), len(s.CoScheduling))},
		)
		if len(s.Gaps) > 0 {
			gaps := make([]string, 0, len(s.Gaps))
			for _, g := range s.Gaps {
				what := g.Part
				if g.VMI != "" {
					what += " of " + g.VMI
				}
				gaps = append(gaps, what+": "+g.Reason)
			}
			out = append(out, Fact{"Not captured", strings.Join(gaps, "; ")})
		}
	}
	return out
}

// Offset formats t relative to the first evidence: +2.9s, -150ms.
func (r *Report) Offset(t time.Time) string {
	if r.origin.IsZero() {
		return ""
	}
	d := t.Sub(r.origin).Round(time.Millisecond)
	if d >= 0 {
		return "+" + d.String()
	}
	return d.String()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "unknown"
	}
	return t.UTC().Format("2006-01-02 15:04:05.000Z")
}

func orUnknown(s string) string { return cmp.Or(s, "unknown") }

func absDur(d time.Duration) time.Duration { return max(d, -d) }
