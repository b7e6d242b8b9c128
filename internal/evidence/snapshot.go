// Package evidence is the evidence snapshot of a ThreatFinding: what the node
// agent saw around the onset of an attack, frozen so a responder can look at
// it after the VMIs have moved on.
//
// A Snapshot holds the counter time series of the victim and every suspect,
// the detector's own figures, sampled guest addresses with their
// introspection attribution, the guest process lists, co-scheduling figures
// per VMI pair and facts about the host. Encode turns it into gzip-compressed
// JSON of at most MaxCompressedBytes, trimming in a fixed order (see Encode)
// and recording what it dropped in Snapshot.Trimmed; it never rejects a
// snapshot for its size. Store writes the result into a ConfigMap owned by
// the finding, so the API server's garbage collector deletes it with the
// finding; Load reads it back. docs/forensics.md describes the format and the
// contract with the operator (AnnotationRef).
//
// Every time inside a snapshot is an offset in nanoseconds from
// Snapshot.Onset (fields ending in Ns), which keeps the encoding compact and
// the plots aligned on the onset.
package evidence

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Format identifies a sidewatch evidence snapshot; Version is the version of
// the format this package writes and the newest it reads. A reader refuses a
// newer version rather than misreading it; fields added within a version
// are ignored by older readers.
const (
	Format  = "sidewatch.io/evidence-snapshot"
	Version = 1
)

// Roles of a VMI in a snapshot: the victim, or a suspect's role from
// v1alpha1.Suspect (Sender, Receiver, Attacker, Unknown).
const (
	RoleVictim = "Victim"
)

// Snapshot is the evidence of one finding at one moment.
type Snapshot struct {
	// Format is always evidence.Format.
	Format string `json:"format"`
	// Version is the format version, evidence.Version when written here.
	Version int `json:"version"`
	// Finding names the finding the snapshot belongs to. Store fills it
	// from the finding.
	Finding FindingRef `json:"finding"`
	// CapturedAt is when the agent took the snapshot.
	CapturedAt time.Time `json:"capturedAt"`
	// Onset is when the evidence crossed the detector's threshold; every
	// ...Ns field is an offset from it.
	Onset time.Time `json:"onset"`
	// VMIs are the victim and the suspects.
	VMIs []VMI `json:"vmis"`
	// Host describes the node.
	Host Host `json:"host"`
	// Series are counter time series, one per VMI and event.
	Series []Series `json:"series,omitempty"`
	// Detector holds the detector's own figures.
	Detector Detector `json:"detector"`
	// Samples are overflow samples of guest instruction pointers with
	// what introspection attributed them to.
	Samples []Sample `json:"samples,omitempty"`
	// Attribution sums the samples per VMI and guest program. It is
	// complete even when samples were trimmed: Encode computes it from
	// all samples before trimming when the agent left it empty.
	Attribution []Attribution `json:"attribution,omitempty"`
	// Processes are the guest process lists at capture time.
	Processes []ProcessList `json:"processes,omitempty"`
	// CoScheduling has one entry per VMI pair that shared the host's
	// cores or caches.
	CoScheduling []CoScheduling `json:"coScheduling,omitempty"`
	// Gaps names the parts the agent could not fill and why (guest
	// introspection or eBPF unavailable, a timeout), so that a missing
	// part is never silently empty.
	Gaps []Gap `json:"gaps,omitempty"`
	// Trimmed says what Encode dropped to fit the size limit, in the order
	// it dropped it. Empty when nothing was dropped.
	Trimmed []TrimNote `json:"trimmed,omitempty"`
}

// FindingRef identifies the finding.
type FindingRef struct {
	Namespace string              `json:"namespace"`
	Name      string              `json:"name"`
	UID       types.UID           `json:"uid,omitempty"`
	Type      v1alpha1.ThreatType `json:"type,omitempty"`
	Node      string              `json:"node,omitempty"`
	Detector  string              `json:"detector,omitempty"`
	Severity  v1alpha1.Severity   `json:"severity,omitempty"`
	Score     float64             `json:"score,omitempty"`
}

// VMI is the victim or a suspect.
type VMI struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	UID       types.UID `json:"uid,omitempty"`
	// Role is RoleVictim or the suspect's role (Sender, Receiver,
	// Attacker, Unknown).
	Role string `json:"role"`
	// VCPUs is how many vCPU threads the agent counted.
	VCPUs int32 `json:"vcpus,omitempty"`
	// HostCPUs are the host CPUs its vCPU threads ran on in the window.
	HostCPUs []int32 `json:"hostCPUs,omitempty"`
}

// Key is "namespace/name", the form every other field uses to name a VMI
// (as v1alpha1.EventRate.VMI does).
func (v VMI) Key() string { return v.Namespace + "/" + v.Name }

// Host is what the agent knows about its node.
type Host struct {
	Node string `json:"node"`
	// CPUModel is the CPU's marketing name, Vendor GenuineIntel or
	// AuthenticAMD, Family/Model/Stepping from CPUID.
	CPUModel string `json:"cpuModel,omitempty"`
	Vendor   string `json:"vendor,omitempty"`
	Family   int    `json:"family,omitempty"`
	Model    int    `json:"model,omitempty"`
	Stepping int    `json:"stepping,omitempty"`
	// Microcode is the microcode revision (/proc/cpuinfo "microcode").
	Microcode string `json:"microcode,omitempty"`
	// KernelRelease is the host's uname -r.
	KernelRelease string `json:"kernelRelease,omitempty"`
	// SMT is /sys/devices/system/cpu/smt/control: on, off, forceoff,
	// notsupported or notimplemented.
	SMT string `json:"smt,omitempty"`
	// LogicalCPUs counts the host's online CPUs; LLCDomains the groups of
	// CPUs sharing a last-level cache.
	LogicalCPUs int `json:"logicalCPUs,omitempty"`
	LLCDomains  int `json:"llcDomains,omitempty"`
	// HardwareCounters is true when the PMU could count guest events.
	HardwareCounters bool `json:"hardwareCounters"`
	// AgentVersion is the agent build that took the snapshot.
	AgentVersion string `json:"agentVersion,omitempty"`
	// UnavailableSignals names the signals the node could not provide and
	// why, e.g. "llc_misses: no hardware counters".
	UnavailableSignals []string `json:"unavailableSignals,omitempty"`
}

// Series is one counter of one VMI over time: Values[i] is the number of
// events in [StartNs+i*StepNs, StartNs+(i+1)*StepNs), summed over the VMI's
// vCPUs.
type Series struct {
	// VMI is namespace/name.
	VMI string `json:"vmi"`
	// Event is the counter, a v1alpha1.CounterEvent (or a software event
	// name such as task_clock where no PMU exists).
	Event   v1alpha1.CounterEvent `json:"event"`
	StartNs int64                 `json:"startNs"`
	StepNs  int64                 `json:"stepNs"`
	Values  []float64             `json:"values"`
}

// End is the offset just past the last value.
func (s Series) End() int64 { return s.StartNs + int64(len(s.Values))*s.StepNs }

// Detector holds the figures the detector computed.
type Detector struct {
	// Name is the detector and its version, e.g. cache-oscillation/v1.
	Name string `json:"name,omitempty"`
	// Score (0..1) is its confidence.
	Score float64 `json:"score,omitempty"`
	// Autocorrelation is the CC-Hunter autocorrelation of the conflict
	// miss train (cache covert channels).
	Autocorrelation *Correlogram `json:"autocorrelation,omitempty"`
	// CrossCorrelation is between the trains of a covert channel's two
	// ends; VMI names both, joined by "+".
	CrossCorrelation *Correlogram `json:"crossCorrelation,omitempty"`
	// Bursts are the periodic lock bursts (bus-lock covert channels).
	Bursts []BurstTrain `json:"bursts,omitempty"`
	// PhaseCorrelation relates a suspect's anomalies to the victim's
	// sensitive phases (side channels on crypto code).
	PhaseCorrelation []PhaseCorrelation `json:"phaseCorrelation,omitempty"`
	// EventRates are the mean counter rates per VMI over the window.
	EventRates []v1alpha1.EventRate `json:"eventRates,omitempty"`
	// Figures holds any other figure by name (e.g. anomalyScore,
	// threshold, bitsPerSecond), so new detector figures need no format
	// change.
	Figures map[string]float64 `json:"figures,omitempty"`
}

// Correlogram is a normalised correlation curve by lag: Values[i] is the
// correlation at lag FirstLagNs + i*LagStepNs (for an autocorrelation from
// lag 0, Values[0] is 1).
type Correlogram struct {
	// VMI and Event name the train it was computed on; VMI may name two
	// VMIs joined by "+" for a pair's joint train or a cross-correlation.
	VMI        string                `json:"vmi"`
	Event      v1alpha1.CounterEvent `json:"event"`
	FirstLagNs int64                 `json:"firstLagNs,omitempty"`
	LagStepNs  int64                 `json:"lagStepNs"`
	Values     []float64             `json:"values"`
	// PeakLagNs and PeakValue are the highest peak past lag 0: the
	// oscillation's period and strength.
	PeakLagNs int64   `json:"peakLagNs"`
	PeakValue float64 `json:"peakValue"`
	// Threshold is the peak value the detector requires.
	Threshold float64 `json:"threshold,omitempty"`
}

// BurstTrain is one VMI's periodic lock bursts.
type BurstTrain struct {
	VMI   string                `json:"vmi"`
	Event v1alpha1.CounterEvent `json:"event"`
	// TimesNs are the burst starts, ascending; PeriodsNs the gaps between
	// consecutive bursts (one fewer than TimesNs unless trimmed).
	TimesNs   []int64 `json:"timesNs"`
	PeriodsNs []int64 `json:"periodsNs,omitempty"`
	// MeanPeriodNs and LocksPerSecond (inside bursts) summarise them.
	MeanPeriodNs   int64   `json:"meanPeriodNs,omitempty"`
	LocksPerSecond float64 `json:"locksPerSecond,omitempty"`
}

// Interval is [StartNs, EndNs).
type Interval struct {
	StartNs int64 `json:"startNs"`
	EndNs   int64 `json:"endNs"`
}

// PhaseCorrelation is how a suspect's cache anomalies line up with the
// victim's sensitive phases.
type PhaseCorrelation struct {
	Suspect string `json:"suspect"`
	Victim  string `json:"victim"`
	// Signature names the victim signature whose code marks the phases
	// (e.g. openssl-rsa).
	Signature string `json:"signature,omitempty"`
	// Coefficient (-1..1) correlates the two.
	Coefficient float64 `json:"coefficient"`
	// Phases are the victim's sensitive phases; Anomalies the suspect's
	// anomalous intervals.
	Phases    []Interval `json:"phases,omitempty"`
	Anomalies []Interval `json:"anomalies,omitempty"`
}

// Hex is a guest address or file offset, written "0x..." in JSON so that
// readers without 64-bit integers (jq, browsers) keep every bit.
type Hex uint64

// MarshalJSON writes "0x<hex>".
func (h Hex) MarshalJSON() ([]byte, error) {
	return []byte(`"0x` + strconv.FormatUint(uint64(h), 16) + `"`), nil
}

// UnmarshalJSON reads "0x<hex>".
func (h *Hex) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("address: want a \"0x...\" string: %w", err)
	}
	if !strings.HasPrefix(s, "0x") || len(s) < 3 || len(s) > 18 {
		return fmt.Errorf("address %q: want 0x followed by up to 16 hex digits", s)
	}
	v, err := strconv.ParseUint(s[2:], 16, 64)
	if err != nil {
		return fmt.Errorf("address %q: want 0x followed by up to 16 hex digits", s)
	}
	*h = Hex(v)
	return nil
}

// String formats h as 0x<hex>.
func (h Hex) String() string { return "0x" + strconv.FormatUint(uint64(h), 16) }

// Sample is one overflow sample of a guest instruction pointer and what
// introspection attributed it to.
type Sample struct {
	VMI  string `json:"vmi"`
	VCPU int32  `json:"vcpu"`
	TNs  int64  `json:"tNs"`
	// Event is the counter that overflowed.
	Event v1alpha1.CounterEvent `json:"event,omitempty"`
	RIP   Hex                   `json:"rip"`
	// PID, Comm, Path, Offset and Symbol are the attribution; empty when
	// introspection could not place the address.
	PID    int32  `json:"pid,omitempty"`
	Comm   string `json:"comm,omitempty"`
	Path   string `json:"path,omitempty"`
	Offset Hex    `json:"offset,omitempty"`
	Symbol string `json:"symbol,omitempty"`
	// Via says how the process was chosen: "vcpu-history" (the task
	// introspection saw on the sample's vCPU near the sample's time),
	// "vcpu" (the task running on it when the snapshot was taken: the
	// sample's process only if the same task still ran), "pid".
	Via string `json:"via,omitempty"`
}

// Attribution sums one VMI's samples per guest program.
type Attribution struct {
	VMI string `json:"vmi"`
	// Programs, most samples first.
	Programs []v1alpha1.GuestProgram `json:"programs,omitempty"`
	// Unattributed counts samples introspection could not place.
	Unattributed int64 `json:"unattributed,omitempty"`
}

// ProcessList is a VMI's guest processes at capture time.
type ProcessList struct {
	VMI string `json:"vmi"`
	// Error says why the list is missing or incomplete (e.g. the guest's
	// task list could not be walked).
	Error     string    `json:"error,omitempty"`
	Processes []Process `json:"processes,omitempty"`
	// Total counts the processes before any trimming.
	Total int `json:"total,omitempty"`
}

// Process is one guest process.
type Process struct {
	PID  int32  `json:"pid"`
	PPID int32  `json:"ppid,omitempty"`
	Comm string `json:"comm"`
	// Exe is the executable's path.
	Exe string `json:"exe,omitempty"`
	// Libraries are the shared objects mapped executable.
	Libraries []string `json:"libraries,omitempty"`
}

// CoScheduling is how much two VMIs ran at the same time on CPUs that share
// hardware.
type CoScheduling struct {
	A string `json:"a"`
	B string `json:"b"`
	// WindowNs is the span the figures cover.
	WindowNs int64 `json:"windowNs"`
	// SMTSiblingNs is the time a vCPU of A and one of B ran at once on the
	// two hardware threads of one core; SharedLLCNs the time they ran at
	// once on any CPUs sharing a last-level cache (siblings included).
	SMTSiblingNs int64 `json:"smtSiblingNs"`
	SharedLLCNs  int64 `json:"sharedLLCNs"`
	// Handovers counts how often a vCPU of one followed a vCPU of the
	// other on the same CPU (time-sliced attacks on one core).
	Handovers int64 `json:"handovers,omitempty"`
	// Overlap is the same over time, when the agent kept it.
	Overlap *Overlap `json:"overlap,omitempty"`
}

// Overlap holds, per step, the fraction (0..1) of the step that A and B ran
// at once on SMT siblings and on CPUs sharing an LLC.
type Overlap struct {
	StartNs    int64     `json:"startNs"`
	StepNs     int64     `json:"stepNs"`
	SMTSibling []float64 `json:"smtSibling"`
	SharedLLC  []float64 `json:"sharedLLC"`
}

// Gap is a part of a snapshot the agent could not fill.
type Gap struct {
	// Part names it: processes, samples (their attribution),
	// coScheduling, hostCPUs.
	Part string `json:"part"`
	// VMI is namespace/name when the gap concerns one VMI only.
	VMI string `json:"vmi,omitempty"`
	// Reason says why, e.g. "guest introspection unavailable: QEMU pid
	// 4242 has no QMP socket on its command line".
	Reason string `json:"reason"`
}

// TrimNote records one trimming step of Encode.
type TrimNote struct {
	// Stage names what was trimmed: samples, processes, series-window,
	// series-resolution, detector, co-scheduling, ...
	Stage string `json:"stage"`
	// Detail says exactly what was dropped.
	Detail string `json:"detail"`
}

// TrimmedSummary is the trimming notes in one line, for
// EvidenceSnapshotRef.Trimmed; empty when nothing was trimmed.
func (s *Snapshot) TrimmedSummary() string {
	parts := make([]string, 0, len(s.Trimmed))
	for _, n := range s.Trimmed {
		parts = append(parts, n.Stage+": "+n.Detail)
	}
	return clampString(strings.Join(parts, "; "), MaxRefTrimmed)
}

// VMI returns the VMI named by key (namespace/name).
func (s *Snapshot) VMI(key string) (VMI, bool) {
	for _, v := range s.VMIs {
		if v.Key() == key {
			return v, true
		}
	}
	return VMI{}, false
}

// Victim returns the victim VMI.
func (s *Snapshot) Victim() (VMI, bool) {
	for _, v := range s.VMIs {
		if v.Role == RoleVictim {
			return v, true
		}
	}
	return VMI{}, false
}

// IntervalsFromTrain turns a regularly sampled indicator (a victim's
// sensitive-phase train, a suspect's anomaly z-scores) into the intervals
// where it is at or above threshold, merging adjacent steps.
func IntervalsFromTrain[T float32 | float64](startNs, stepNs int64, values []T, threshold T) []Interval {
	var out []Interval
	for i := 0; i < len(values); i++ {
		if values[i] < threshold {
			continue
		}
		j := i
		for j < len(values) && values[j] >= threshold {
			j++
		}
		out = append(out, Interval{StartNs: startNs + int64(i)*stepNs, EndNs: startNs + int64(j)*stepNs})
		i = j
	}
	return out
}

// At converts an offset from the onset into a time.
func (s *Snapshot) At(ns int64) time.Time { return s.Onset.Add(time.Duration(ns)) }
