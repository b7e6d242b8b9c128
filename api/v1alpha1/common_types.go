package v1alpha1

// CounterEvent names a hardware event the node agent counts per vCPU thread.
// The names are the ones used in the trace format (docs/trace-format.md).
// +kubebuilder:validation:Enum=llc_references;llc_misses;l1d_misses;bus_locks;split_locks;instructions;cycles
type CounterEvent string

// The counter events sidewatch knows.
const (
	EventLLCReferences CounterEvent = "llc_references"
	EventLLCMisses     CounterEvent = "llc_misses"
	EventL1DMisses     CounterEvent = "l1d_misses"
	EventBusLocks      CounterEvent = "bus_locks"
	EventSplitLocks    CounterEvent = "split_locks"
	EventInstructions  CounterEvent = "instructions"
	EventCycles        CounterEvent = "cycles"
)

// AllCounterEvents lists every counter event in a fixed order.
var AllCounterEvents = []CounterEvent{
	EventLLCReferences, EventLLCMisses, EventL1DMisses, EventBusLocks,
	EventSplitLocks, EventInstructions, EventCycles,
}

// ThreatType is the kind of attack a finding reports.
// +kubebuilder:validation:Enum=CacheCovertChannel;CacheSideChannel;BusLockCovertChannel
type ThreatType string

// The threat types the detectors report.
const (
	// CacheCovertChannel: two VMIs exchange data by modulating shared-cache
	// contention (cache oscillation, CC-Hunter).
	CacheCovertChannel ThreatType = "CacheCovertChannel"
	// CacheSideChannel: a VMI spies on a co-located victim through the cache
	// (Prime+Probe, Flush+Reload) while the victim runs sensitive code.
	CacheSideChannel ThreatType = "CacheSideChannel"
	// BusLockCovertChannel: two VMIs exchange data through periodic bursts of
	// memory-bus (split) locks.
	BusLockCovertChannel ThreatType = "BusLockCovertChannel"
)

// Severity ranks findings. Order: Low < Medium < High < Critical.
// +kubebuilder:validation:Enum=Low;Medium;High;Critical
type Severity string

// Severities, lowest first.
const (
	SeverityLow      Severity = "Low"
	SeverityMedium   Severity = "Medium"
	SeverityHigh     Severity = "High"
	SeverityCritical Severity = "Critical"
)

// Rank orders severities: Low=1 .. Critical=4, unknown=0.
func (s Severity) Rank() int {
	switch s {
	case SeverityLow:
		return 1
	case SeverityMedium:
		return 2
	case SeverityHigh:
		return 3
	case SeverityCritical:
		return 4
	}
	return 0
}

// AtLeast reports whether s is as severe as min or more.
func (s Severity) AtLeast(min Severity) bool { return s.Rank() >= min.Rank() && s.Rank() > 0 }

// SeverityForScore maps a detection score in [0,1] to a severity.
func SeverityForScore(score float64) Severity {
	switch {
	case score >= 0.9:
		return SeverityCritical
	case score >= 0.7:
		return SeverityHigh
	case score >= 0.4:
		return SeverityMedium
	}
	return SeverityLow
}

// ResponseAction is what the operator does about a finding.
// +kubebuilder:validation:Enum=Alert;Migrate
type ResponseAction string

// Response actions.
const (
	// ActionAlert records the finding, Events and metrics; it never moves a VMI.
	ActionAlert ResponseAction = "Alert"
	// ActionMigrate also live-migrates the victim VMI away from the node.
	ActionMigrate ResponseAction = "Migrate"
)

// Labels, annotations and names shared by the operator and the node agent.
const (
	// LabelNode on a ThreatFinding names the node whose agent wrote it.
	LabelNode = "sidewatch.io/node"
	// LabelVictim on a ThreatFinding names the victim VMI.
	LabelVictim = "sidewatch.io/victim"
	// LabelType on a ThreatFinding carries spec.type.
	LabelType = "sidewatch.io/type"
	// LabelFinding on an owned object (migration, evidence) names its finding.
	LabelFinding = "sidewatch.io/finding"
)
