package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SideChannelPolicySpec says which VMIs are protected, what the node agents
// collect for them, how the detectors judge what they see, and what the
// operator does about a finding.
//
// +kubebuilder:validation:XValidation:rule="!(self.?collection.?interval.hasValue() && self.?detectors.?cacheOscillation.?window.hasValue()) || duration(self.detectors.cacheOscillation.window).getMilliseconds() >= 10 * duration(self.collection.interval).getMilliseconds()",message="detectors.cacheOscillation.window must be at least 10 times collection.interval: a shorter window cannot show a periodic signal",fieldPath=".detectors.cacheOscillation.window"
// +kubebuilder:validation:XValidation:rule="!(self.?collection.?interval.hasValue() && self.?detectors.?busLock.?window.hasValue()) || duration(self.detectors.busLock.window).getMilliseconds() >= 10 * duration(self.collection.interval).getMilliseconds()",message="detectors.busLock.window must be at least 10 times collection.interval: a shorter window cannot show recurring bursts",fieldPath=".detectors.busLock.window"
// +kubebuilder:validation:XValidation:rule="!(self.?collection.?interval.hasValue() && self.?detectors.?cryptoCorrelation.?window.hasValue()) || duration(self.detectors.cryptoCorrelation.window).getMilliseconds() >= 10 * duration(self.collection.interval).getMilliseconds()",message="detectors.cryptoCorrelation.window must be at least 10 times collection.interval",fieldPath=".detectors.cryptoCorrelation.window"
type SideChannelPolicySpec struct {
	// namespaceSelector selects the namespaces whose VMIs this policy
	// protects. Absent or empty ({}) selects every namespace.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// vmiSelector selects VMIs by label inside the selected namespaces.
	// Absent or empty ({}) selects every VMI there.
	// +optional
	VMISelector *metav1.LabelSelector `json:"vmiSelector,omitempty"`

	// priority decides between policies that select the same VMI: the highest
	// priority wins; on a tie the policy whose name sorts first wins. The
	// winning policy alone governs that VMI's findings.
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=-1000
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Priority int32 `json:"priority,omitempty"`

	// collection says what the node agents count and sample for the VMIs on
	// their node.
	// +kubebuilder:default={}
	// +optional
	Collection CollectionSpec `json:"collection,omitempty"`

	// detectors tunes each detector. Every field has a default that works on
	// common hardware.
	// +kubebuilder:default={}
	// +optional
	Detectors DetectorsSpec `json:"detectors,omitempty"`

	// response says what the operator does when a finding about a VMI this
	// policy governs reaches response.minSeverity.
	// +kubebuilder:default={}
	// +optional
	Response ResponseSpec `json:"response,omitempty"`
}

// CollectionSpec is what the node agent collects per vCPU thread.
// +kubebuilder:validation:XValidation:rule="!has(self.sampledEvents) || !has(self.events) || self.sampledEvents.all(e, e in self.events)",message="collection.sampledEvents may only name events that collection.events counts",fieldPath=".sampledEvents"
type CollectionSpec struct {
	// interval is how often each vCPU's counters are read; it is also the
	// resolution of the coarse event trains the detectors see.
	// Between 10ms and 10s.
	// +kubebuilder:default="100ms"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10ms') && duration(self) <= duration('10s')",message="collection.interval must be between 10ms and 10s"
	// +optional
	Interval *metav1.Duration `json:"interval,omitempty"`

	// events are the hardware events counted on every vCPU thread, in
	// guest mode only. Events the node's PMU lacks are reported in the
	// node's heartbeat and skipped.
	// +kubebuilder:default={llc_references,llc_misses,l1d_misses,bus_locks,split_locks,instructions,cycles}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=7
	// +listType=set
	// +optional
	Events []CounterEvent `json:"events,omitempty"`

	// sampledEvents are the events whose overflow samples the guest
	// instruction pointer (and, where the PMU can, the guest's last
	// branches): one sample every samplePeriod events. They must also be
	// listed in events.
	// +kubebuilder:default={llc_misses,bus_locks}
	// +kubebuilder:validation:MaxItems=7
	// +listType=set
	// +optional
	SampledEvents []CounterEvent `json:"sampledEvents,omitempty"`

	// samplePeriod is the overflow threshold: how many occurrences of a
	// sampled event between two samples. Lower means finer event trains and
	// more cost.
	// +kubebuilder:default=10000
	// +kubebuilder:validation:Minimum=100
	// +kubebuilder:validation:Maximum=100000000
	// +optional
	SamplePeriod int64 `json:"samplePeriod,omitempty"`
}

// DetectorsSpec tunes the three detectors.
type DetectorsSpec struct {
	// cacheOscillation finds covert channels that modulate shared-cache
	// contention, from the autocorrelation of LLC event trains (CC-Hunter).
	// +kubebuilder:default={}
	// +optional
	CacheOscillation CacheOscillationSpec `json:"cacheOscillation,omitempty"`

	// busLock finds covert channels made of periodic bursts of memory-bus
	// and split locks.
	// +kubebuilder:default={}
	// +optional
	BusLock BusLockSpec `json:"busLock,omitempty"`

	// cryptoCorrelation finds cache attacks on a victim's sensitive code by
	// correlating the victim's signature with anomalies in co-located VMIs
	// (CloudRadar).
	// +kubebuilder:default={}
	// +optional
	CryptoCorrelation CryptoCorrelationSpec `json:"cryptoCorrelation,omitempty"`
}

// CacheOscillationSpec tunes the cache-oscillation covert-channel detector.
// +kubebuilder:validation:XValidation:rule="!has(self.minPeriod) || !has(self.maxPeriod) || duration(self.minPeriod) < duration(self.maxPeriod)",message="detectors.cacheOscillation.minPeriod must be shorter than maxPeriod",fieldPath=".minPeriod"
type CacheOscillationSpec struct {
	// enabled turns the detector on or off.
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// window is how much of the event train is analysed at once; it must
	// hold at least 10 collection intervals.
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('100ms') && duration(self) <= duration('10m')",message="detectors.cacheOscillation.window must be between 100ms and 10m"
	// +optional
	Window *metav1.Duration `json:"window,omitempty"`

	// minAutocorrelation is the smallest normalised autocorrelation peak
	// (0..1) at a non-zero lag that counts as an oscillation.
	// +kubebuilder:default=0.5
	// +kubebuilder:validation:Minimum=0.05
	// +kubebuilder:validation:Maximum=1
	// +optional
	MinAutocorrelation float64 `json:"minAutocorrelation,omitempty"`

	// minRepetitions is how many periods must fit in the window: a pattern
	// seen twice is not yet a channel.
	// +kubebuilder:default=6
	// +kubebuilder:validation:Minimum=3
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MinRepetitions int32 `json:"minRepetitions,omitempty"`

	// minPeriod is the shortest oscillation period (one bit) considered.
	// +kubebuilder:default="1ms"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +optional
	MinPeriod *metav1.Duration `json:"minPeriod,omitempty"`

	// maxPeriod is the longest oscillation period considered; slower
	// "channels" are indistinguishable from ordinary workload phases.
	// +kubebuilder:default="5s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +optional
	MaxPeriod *metav1.Duration `json:"maxPeriod,omitempty"`
}

// BusLockSpec tunes the bus-lock covert-channel detector.
type BusLockSpec struct {
	// enabled turns the detector on or off.
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// window is how much history is searched for recurring bursts.
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('100ms') && duration(self) <= duration('10m')",message="detectors.busLock.window must be between 100ms and 10m"
	// +optional
	Window *metav1.Duration `json:"window,omitempty"`

	// minBurstRate is the bus/split-lock rate (locks per second, per VMI)
	// above which an interval belongs to a burst. Ordinary software takes
	// almost no bus locks, so a few hundred per second already stand out.
	// +kubebuilder:default=500
	// +kubebuilder:validation:Minimum=1
	// +optional
	MinBurstRate int64 `json:"minBurstRate,omitempty"`

	// minBursts is how many bursts the window must hold before their
	// spacing is judged.
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=3
	// +kubebuilder:validation:Maximum=10000
	// +optional
	MinBursts int32 `json:"minBursts,omitempty"`

	// minRegularity (0..1) is how regular the spacing of bursts must be:
	// 1 - coefficient of variation of the inter-burst gaps, measured on the
	// channel's bit clock.
	// +kubebuilder:default=0.6
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1
	// +optional
	MinRegularity float64 `json:"minRegularity,omitempty"`
}

// CryptoCorrelationSpec tunes the side-channel detector that correlates a
// victim's sensitive phases with anomalies in co-located VMIs.
// +kubebuilder:validation:XValidation:rule="!has(self.baselineWindow) || !has(self.window) || duration(self.baselineWindow) > duration(self.window)",message="detectors.cryptoCorrelation.baselineWindow must be longer than window",fieldPath=".baselineWindow"
type CryptoCorrelationSpec struct {
	// enabled turns the detector on or off.
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// window is the span over which a suspect's anomalies are correlated
	// with the victim's sensitive phases.
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('100ms') && duration(self) <= duration('10m')",message="detectors.cryptoCorrelation.window must be between 100ms and 10m"
	// +optional
	Window *metav1.Duration `json:"window,omitempty"`

	// baselineWindow is how much history the online per-VMI baseline of
	// cache behaviour remembers.
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('24h')",message="detectors.cryptoCorrelation.baselineWindow must be at most 24h"
	// +optional
	BaselineWindow *metav1.Duration `json:"baselineWindow,omitempty"`

	// anomalyThreshold is how far (in robust standard deviations) a VMI's
	// LLC miss rate must rise above its own baseline to count as anomalous.
	// +kubebuilder:default=4
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	AnomalyThreshold float64 `json:"anomalyThreshold,omitempty"`

	// minCorrelation (0..1) is how strongly a suspect's anomalies must
	// coincide with the victim's sensitive phases.
	// +kubebuilder:default=0.6
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1
	// +optional
	MinCorrelation float64 `json:"minCorrelation,omitempty"`

	// signatures recognise the victim's sensitive code. With none, the
	// detector uses the built-in signature of common crypto libraries
	// (libcrypto, libssl, libgcrypt, libsodium, libmbedcrypto, libnettle).
	// +kubebuilder:validation:MaxItems=32
	// +listType=map
	// +listMapKey=name
	// +optional
	Signatures []Signature `json:"signatures,omitempty"`
}

// Signature recognises a victim's sensitive code by where its sampled guest
// instruction pointers fall, by a counter profile learned with
// `sidewatch profile`, or both.
// +kubebuilder:validation:XValidation:rule="(has(self.libraries) && size(self.libraries) > 0) || (has(self.symbols) && size(self.symbols) > 0) || has(self.profileConfigMap)",message="a signature needs libraries, symbols or profileConfigMap"
type Signature struct {
	// name identifies the signature in findings.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// libraries are guest file names (base names such as libcrypto.so.3, or
	// absolute paths) whose code is sensitive.
	// +kubebuilder:validation:MaxItems=32
	// +listType=set
	// +optional
	Libraries []string `json:"libraries,omitempty"`

	// symbols are function names inside those libraries (or the guest
	// kernel) that are sensitive, e.g. BN_mod_exp_mont.
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	// +optional
	Symbols []string `json:"symbols,omitempty"`

	// profileConfigMap names a ConfigMap in the operator's namespace whose
	// key "profile.json" holds a counter profile written by
	// `sidewatch profile`.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	ProfileConfigMap string `json:"profileConfigMap,omitempty"`
}

// ResponseSpec is what the operator does about findings.
// +kubebuilder:validation:XValidation:rule="self.?action.orValue('Alert') != 'Migrate' || self.?maxConcurrentMigrations.orValue(2) >= 1",message="response.maxConcurrentMigrations must be at least 1 when response.action is Migrate",fieldPath=".maxConcurrentMigrations"
type ResponseSpec struct {
	// action is Alert (record, emit Events and metrics) or Migrate (also
	// live-migrate the victim VMI to a node that hosts neither the attacker
	// nor other suspects).
	// +kubebuilder:default=Alert
	// +optional
	Action ResponseAction `json:"action,omitempty"`

	// minSeverity is the lowest finding severity that triggers the action;
	// less severe findings are recorded as Suppressed.
	// +kubebuilder:default=High
	// +optional
	MinSeverity Severity `json:"minSeverity,omitempty"`

	// cooldown is the least time between two sidewatch migrations of the
	// same VMI, so that a VMI never ping-pongs between nodes.
	// +kubebuilder:default="30m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('168h')",message="response.cooldown must be at most 168h"
	// +optional
	Cooldown *metav1.Duration `json:"cooldown,omitempty"`

	// maxConcurrentMigrations caps sidewatch migrations in flight across
	// the whole cluster; a finding waits (phase Detected, condition
	// MigrationThrottled) while the cap is reached. When policies differ,
	// each finding obeys the cap of the policy that governs it.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	MaxConcurrentMigrations int32 `json:"maxConcurrentMigrations,omitempty"`

	// maxMigrationAttempts is how many times a failed migration is tried
	// before the finding becomes MitigationFailed.
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	// +optional
	MaxMigrationAttempts int32 `json:"maxMigrationAttempts,omitempty"`

	// retryBackoff is the wait after the first failed attempt; it doubles
	// after each further failure.
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="response.retryBackoff must be between 1s and 1h"
	// +optional
	RetryBackoff *metav1.Duration `json:"retryBackoff,omitempty"`
}

// UnmonitoredNode is a node whose VMIs a policy selects but whose agent
// cannot watch them.
type UnmonitoredNode struct {
	// node is the node's name.
	Node string `json:"node"`
	// reason is a CamelCase cause: NoAgent, HeartbeatStale,
	// NoHardwareCounters, PMUOwnedByGuest, InsufficientPrivileges.
	Reason string `json:"reason"`
	// message explains the reason for a person, e.g.
	// "node n1: no hardware counters".
	// +optional
	Message string `json:"message,omitempty"`
}

// SideChannelPolicyStatus is what the operator observed about the policy.
type SideChannelPolicyStatus struct {
	// observedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready is True when the policy is valid and every node
	// hosting a selected VMI is monitored.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// selectedVMIs counts the VMIs the selectors match.
	// +optional
	SelectedVMIs int32 `json:"selectedVMIs"`

	// governedVMIs counts the selected VMIs for which this policy wins over
	// overlapping policies (see spec.priority).
	// +optional
	GovernedVMIs int32 `json:"governedVMIs"`

	// monitoredNodes counts the nodes hosting selected VMIs whose agent
	// reports a fresh heartbeat and usable counters.
	// +optional
	MonitoredNodes int32 `json:"monitoredNodes"`

	// unmonitoredNodes lists the nodes hosting selected VMIs that cannot be
	// monitored, with the reason.
	// +listType=map
	// +listMapKey=node
	// +kubebuilder:validation:MaxItems=1000
	// +optional
	UnmonitoredNodes []UnmonitoredNode `json:"unmonitoredNodes,omitempty"`
}

// SideChannelPolicy protects the VMIs it selects from cross-VM side-channel
// and covert-channel attacks: what to collect, how to detect, and how to
// respond.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=scp,categories=sidewatch
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.response.action`
// +kubebuilder:printcolumn:name="Selected",type=integer,JSONPath=`.status.selectedVMIs`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SideChannelPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired protection.
	// +kubebuilder:default={}
	// +optional
	Spec SideChannelPolicySpec `json:"spec,omitempty"`
	// status is what the operator observed.
	// +optional
	Status SideChannelPolicyStatus `json:"status,omitempty"`
}

// SideChannelPolicyList is a list of SideChannelPolicy.
//
// +kubebuilder:object:root=true
type SideChannelPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SideChannelPolicy `json:"items"`
}

// Condition types and reasons of a SideChannelPolicy.
const (
	// PolicyReady is True when every node hosting a governed VMI is monitored.
	PolicyReady = "Ready"

	ReasonAllNodesMonitored    = "AllNodesMonitored"
	ReasonSomeNodesUnmonitored = "SomeNodesUnmonitored"
	ReasonNoVMIsSelected       = "NoVMIsSelected"
	ReasonInvalidSelector      = "InvalidSelector"
)

// Reasons a node cannot be monitored (UnmonitoredNode.Reason).
const (
	ReasonNoAgent                = "NoAgent"
	ReasonHeartbeatStale         = "HeartbeatStale"
	ReasonNoHardwareCounters     = "NoHardwareCounters"
	ReasonPMUOwnedByGuest        = "PMUOwnedByGuest"
	ReasonInsufficientPrivileges = "InsufficientPrivileges"
)

func init() {
	SchemeBuilder.Register(&SideChannelPolicy{}, &SideChannelPolicyList{})
}
