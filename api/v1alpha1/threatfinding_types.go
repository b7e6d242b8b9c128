package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// GuestProgram is what introspection learned about sampled guest addresses:
// which guest process ran them, from which file, at which offset.
type GuestProgram struct {
	// pid is the guest process id.
	// +kubebuilder:validation:Minimum=0
	// +optional
	PID int32 `json:"pid,omitempty"`
	// comm is the guest process name (the kernel's task comm).
	// +kubebuilder:validation:MaxLength=64
	// +optional
	Comm string `json:"comm,omitempty"`
	// path is the guest file the address lies in (executable or library),
	// or "[kernel]" for guest kernel addresses.
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Path string `json:"path,omitempty"`
	// offset is the address's offset in that file, in hex (0x...).
	// +kubebuilder:validation:Pattern=`^0x[0-9a-f]+$`
	// +optional
	Offset string `json:"offset,omitempty"`
	// symbol is the function containing the address, when the guest's own
	// symbol tables name it.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Symbol string `json:"symbol,omitempty"`
	// samples is how many samples fell here.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Samples int64 `json:"samples,omitempty"`
}

// Victim is the VMI under attack; it is in the finding's namespace.
type Victim struct {
	// name of the victim VMI.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// uid of the victim VMI, so a VMI re-created under the same name is not
	// mistaken for the victim.
	// +optional
	UID types.UID `json:"uid,omitempty"`
	// guest is what introspection attributed the victim's sampled addresses
	// to (its sensitive code), most samples first.
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	Guest []GuestProgram `json:"guest,omitempty"`
}

// Suspect is a co-located VMI that the evidence points at.
type Suspect struct {
	// namespace of the suspect VMI.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace"`
	// name of the suspect VMI.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// uid of the suspect VMI.
	// +optional
	UID types.UID `json:"uid,omitempty"`
	// score (0..1) is how strongly the evidence points at this VMI.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1
	Score float64 `json:"score"`
	// role is what the suspect does in the attack: Sender or Receiver of a
	// covert channel, or Attacker of a side channel.
	// +kubebuilder:validation:Enum=Sender;Receiver;Attacker;Unknown
	// +optional
	Role string `json:"role,omitempty"`
	// guest is what introspection attributed the suspect's sampled
	// addresses to, most samples first.
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	Guest []GuestProgram `json:"guest,omitempty"`
	// coScheduling is how much the suspect shared hardware with the victim
	// while the evidence accrued, as the node's eBPF sched_switch program
	// measured it, and the weight that put on the suspect's score. Absent
	// where co-scheduling is not measured.
	// +optional
	CoScheduling *SuspectCoScheduling `json:"coScheduling,omitempty"`
}

// SuspectCoScheduling is the co-scheduling of a suspect's and the victim's
// vCPU threads over the detection's evidence window.
type SuspectCoScheduling struct {
	// window is the span measured.
	Window metav1.Duration `json:"window"`
	// sharedLLC is the fraction of the window (0..1) in which vCPUs of
	// both ran at once on CPUs sharing a last-level cache.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1
	SharedLLC float64 `json:"sharedLLC"`
	// smtSiblings is the fraction of the window (0..1) in which they ran
	// at once on SMT siblings of one core (sharing L1 and L2).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1
	SMTSiblings float64 `json:"smtSiblings"`
	// handovers counts how often one took a CPU over right after the
	// other ran there (time-sliced sharing of that CPU's caches).
	// +kubebuilder:validation:Minimum=0
	Handovers int64 `json:"handovers"`
	// weight (0..1) is the factor applied to the suspect's score: 1 when
	// the two shared the hardware the attack needs, less the less they
	// did.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1
	Weight float64 `json:"weight"`
}

// EventRate is one VMI's rate of one counter event around the onset.
type EventRate struct {
	// vmi is namespace/name.
	// +kubebuilder:validation:MaxLength=320
	VMI string `json:"vmi"`
	// event is the counter.
	Event CounterEvent `json:"event"`
	// perSecond is the mean rate over the detection window.
	// +kubebuilder:validation:Minimum=0
	PerSecond float64 `json:"perSecond"`
}

// Evidence holds the detector's figures. Which are set depends on the type.
type Evidence struct {
	// window is the span of data that produced the detection.
	// +kubebuilder:validation:Type=string
	// +optional
	Window *metav1.Duration `json:"window,omitempty"`
	// autocorrelationPeak is the normalised autocorrelation (0..1) at the
	// oscillation's period (cache covert channels).
	// +kubebuilder:validation:Minimum=-1
	// +kubebuilder:validation:Maximum=1
	// +optional
	AutocorrelationPeak *float64 `json:"autocorrelationPeak,omitempty"`
	// period is the length of one oscillation or burst cycle.
	// +kubebuilder:validation:Type=string
	// +optional
	Period *metav1.Duration `json:"period,omitempty"`
	// bitsPerSecond is the covert channel's estimated bit rate (one bit per
	// period).
	// +kubebuilder:validation:Minimum=0
	// +optional
	BitsPerSecond *float64 `json:"bitsPerSecond,omitempty"`
	// burstsPerSecond is how often lock bursts recur (bus-lock channels).
	// +kubebuilder:validation:Minimum=0
	// +optional
	BurstsPerSecond *float64 `json:"burstsPerSecond,omitempty"`
	// locksPerSecond is the lock rate inside bursts.
	// +kubebuilder:validation:Minimum=0
	// +optional
	LocksPerSecond *float64 `json:"locksPerSecond,omitempty"`
	// correlation (-1..1) between the suspect's anomalies and the victim's
	// sensitive phases, or between sender and receiver trains.
	// +kubebuilder:validation:Minimum=-1
	// +kubebuilder:validation:Maximum=1
	// +optional
	Correlation *float64 `json:"correlation,omitempty"`
	// anomalyScore is how far, in robust standard deviations, the suspect's
	// cache behaviour left its baseline.
	// +optional
	AnomalyScore *float64 `json:"anomalyScore,omitempty"`
	// signature names the victim signature that matched (side channels).
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Signature string `json:"signature,omitempty"`
	// samples is how many overflow samples backed the detection.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Samples int64 `json:"samples,omitempty"`
	// eventRates are the counter rates of the victim and suspects.
	// +kubebuilder:validation:MaxItems=64
	// +listType=atomic
	// +optional
	EventRates []EventRate `json:"eventRates,omitempty"`
	// unavailableSignals names signals the node could not provide, so a
	// reader knows what the detection did not see, e.g.
	// "llc_misses: no hardware counters".
	// +kubebuilder:validation:MaxItems=32
	// +listType=atomic
	// +optional
	UnavailableSignals []string `json:"unavailableSignals,omitempty"`
}

// ThreatFindingSpec is written by the node agent that saw the attack.
// +kubebuilder:validation:XValidation:rule="self.node == oldSelf.node",message="spec.node is immutable: a finding belongs to the node that saw it"
// +kubebuilder:validation:XValidation:rule="self.victim.name == oldSelf.victim.name",message="spec.victim.name is immutable: write a new finding for another victim"
// +kubebuilder:validation:XValidation:rule="self.type == oldSelf.type",message="spec.type is immutable: write a new finding for another threat type"
// +kubebuilder:validation:XValidation:rule="timestamp(self.lastSeen) >= timestamp(self.firstSeen)",message="spec.lastSeen must not be before spec.firstSeen",fieldPath=".lastSeen"
// +kubebuilder:validation:XValidation:rule="!has(self.suspects) || !has(self.victim.uid) || self.suspects.all(s, !has(s.uid) || s.uid != self.victim.uid)",message="spec.suspects must not name the victim itself (same uid)",fieldPath=".suspects"
// +kubebuilder:validation:XValidation:rule="self.type != 'CacheSideChannel' || (has(self.suspects) && size(self.suspects) > 0)",message="spec.suspects must name at least one suspect for a CacheSideChannel finding",fieldPath=".suspects"
type ThreatFindingSpec struct {
	// node is the node whose agent saw the attack (where victim and
	// suspects were co-located).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`

	// type of attack.
	Type ThreatType `json:"type"`

	// detector names the detector and its version, e.g. cache-oscillation/v1.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Detector string `json:"detector,omitempty"`

	// severity of the finding, from the score and the victim's protection.
	Severity Severity `json:"severity"`

	// score (0..1) is the detector's confidence.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1
	Score float64 `json:"score"`

	// victim is the VMI under attack, in this finding's namespace.
	Victim Victim `json:"victim"`

	// suspects are the co-located VMIs the evidence points at, highest
	// score first.
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	Suspects []Suspect `json:"suspects,omitempty"`

	// evidence holds the detector's figures.
	// +optional
	Evidence Evidence `json:"evidence,omitempty"`

	// firstSeen is when the evidence first crossed the detector's threshold.
	FirstSeen metav1.Time `json:"firstSeen"`

	// lastSeen is the latest detection merged into this finding.
	LastSeen metav1.Time `json:"lastSeen"`

	// detections counts the detections merged into this finding.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:default=1
	// +optional
	Detections int64 `json:"detections,omitempty"`

	// policy is the SideChannelPolicy the agent applied when detecting.
	// The operator resolves the governing policy again (status.policy).
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Policy string `json:"policy,omitempty"`
}

// FindingPhase is where a finding is in its life.
// +kubebuilder:validation:Enum=Detected;Mitigating;Mitigated;MitigationFailed;Suppressed
type FindingPhase string

// Finding phases.
const (
	// PhaseDetected: recorded; the response has not started (or waits).
	PhaseDetected FindingPhase = "Detected"
	// PhaseMitigating: a migration of the victim is in flight, or a failed
	// one waits for its retry (status.migration.nextAttemptTime).
	PhaseMitigating FindingPhase = "Mitigating"
	// PhaseMitigated: the victim left the affected node, or the policy only
	// alerts and the alert was raised.
	PhaseMitigated FindingPhase = "Mitigated"
	// PhaseMitigationFailed: the response could not be carried out.
	PhaseMitigationFailed FindingPhase = "MitigationFailed"
	// PhaseSuppressed: nothing to do (below minSeverity, no policy, victim
	// gone, merged into another finding).
	PhaseSuppressed FindingPhase = "Suppressed"
)

// Final reports whether the phase ends the finding's life.
func (p FindingPhase) Final() bool {
	return p == PhaseMitigated || p == PhaseMitigationFailed || p == PhaseSuppressed
}

// MigrationStatus follows the live migration of the victim.
type MigrationStatus struct {
	// name of the VirtualMachineInstanceMigration in the victim's namespace.
	// +optional
	Name string `json:"name,omitempty"`
	// attempts is how many migrations were created for this finding.
	// +optional
	Attempts int32 `json:"attempts,omitempty"`
	// sourceNode is the node the victim left (the affected node).
	// +optional
	SourceNode string `json:"sourceNode,omitempty"`
	// targetNode is where the victim landed.
	// +optional
	TargetNode string `json:"targetNode,omitempty"`
	// excludedNodes are the nodes the victim was kept off: the affected
	// node and every node hosting a suspect of an active finding.
	// +listType=set
	// +optional
	ExcludedNodes []string `json:"excludedNodes,omitempty"`
	// startTime is when the current attempt's migration was created.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// completionTime is when the last attempt ended.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// duration of the successful migration.
	// +kubebuilder:validation:Type=string
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`
	// result of the last attempt: Succeeded or Failed.
	// +optional
	Result string `json:"result,omitempty"`
	// nextAttemptTime is when a failed migration will be tried again.
	// +optional
	NextAttemptTime *metav1.Time `json:"nextAttemptTime,omitempty"`
	// lastFailure says why the last failed attempt failed, as KubeVirt or
	// the API server reported it.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	LastFailure string `json:"lastFailure,omitempty"`
}

// EvidenceSnapshotRef points at the compressed evidence snapshot the finding
// owns.
type EvidenceSnapshotRef struct {
	// configMapName is the ConfigMap holding the snapshot, in the finding's
	// namespace; it is owned by the finding and deleted with it.
	ConfigMapName string `json:"configMapName"`
	// bytes is the compressed size.
	// +optional
	Bytes int64 `json:"bytes,omitempty"`
	// trimmed says what was dropped to fit the size limit, if anything.
	// +optional
	Trimmed string `json:"trimmed,omitempty"`
	// capturedAt is when the snapshot was taken.
	// +optional
	CapturedAt *metav1.Time `json:"capturedAt,omitempty"`
}

// ThreatFindingStatus is written by the operator.
type ThreatFindingStatus struct {
	// observedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// phase summarises the finding's life; it is derived from the
	// conditions and the migration.
	// +optional
	Phase FindingPhase `json:"phase,omitempty"`

	// conditions: Actionable, Migrating, Mitigated.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// policy is the SideChannelPolicy that governs the victim.
	// +optional
	Policy string `json:"policy,omitempty"`

	// action is the response the operator decided on.
	// +optional
	Action ResponseAction `json:"action,omitempty"`

	// migration follows the victim's live migration.
	// +optional
	Migration *MigrationStatus `json:"migration,omitempty"`

	// mergedInto names the finding about the same victim whose migration
	// also answers this one.
	// +optional
	MergedInto string `json:"mergedInto,omitempty"`

	// evidence points at the evidence snapshot.
	// +optional
	Evidence *EvidenceSnapshotRef `json:"evidence,omitempty"`

	// message says, for a person, what happened last and what to do.
	// +optional
	Message string `json:"message,omitempty"`

	// resolvedTime is when the finding reached a final phase; resolved
	// findings are deleted a retention period after it.
	// +optional
	ResolvedTime *metav1.Time `json:"resolvedTime,omitempty"`
}

// ThreatFinding reports a cross-VM side-channel or covert-channel attack seen
// by a node agent, and what the operator did about it.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=tf,categories=sidewatch
// +kubebuilder:printcolumn:name="Victim",type=string,JSONPath=`.spec.victim.name`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="Severity",type=string,JSONPath=`.spec.severity`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.status.migration.targetNode`,priority=1
// +kubebuilder:printcolumn:name="Score",type=number,JSONPath=`.spec.score`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ThreatFinding struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the node agent's report.
	Spec ThreatFindingSpec `json:"spec"`
	// status is the operator's response.
	// +optional
	Status ThreatFindingStatus `json:"status,omitempty"`
}

// ThreatFindingList is a list of ThreatFinding.
//
// +kubebuilder:object:root=true
type ThreatFindingList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ThreatFinding `json:"items"`
}

// Condition types of a ThreatFinding.
const (
	// FindingActionable is True when a policy governs the victim and the
	// finding is severe enough for its action.
	FindingActionable = "Actionable"
	// FindingMigrating is True while a migration of the victim is in flight.
	FindingMigrating = "Migrating"
	// FindingMitigated is True when the response is complete.
	FindingMitigated = "Mitigated"
)

func init() {
	SchemeBuilder.Register(&ThreatFinding{}, &ThreatFindingList{})
}
