package v1alpha1

// The node heartbeat contract between the node agent (writer) and the
// operator (reader).
//
// Every agent keeps one coordination.k8s.io/v1 Lease per node:
//
//	namespace:  the agent's namespace (default sidewatch-system)
//	name:       HeartbeatLeaseName(node), i.e. "sidewatch-agent-<node>"
//	labels:     LabelHeartbeat: "true", LabelNode: <node>
//	spec.holderIdentity:        <node>
//	spec.leaseDurationSeconds:  how long the heartbeat stays fresh
//	spec.renewTime:             refreshed at least every duration/3
//	annotations[AnnotationCapabilities]: NodeCapabilities as JSON
//
// A Lease whose renewTime is older than leaseDurationSeconds is stale: the
// node is unmonitored with reason HeartbeatStale. A node hosting selected
// VMIs without a Lease is unmonitored with reason NoAgent.

// Heartbeat names.
const (
	// HeartbeatLeasePrefix starts the name of every agent heartbeat Lease.
	HeartbeatLeasePrefix = "sidewatch-agent-"
	// LabelHeartbeat marks agent heartbeat Leases.
	LabelHeartbeat = "sidewatch.io/heartbeat"
	// AnnotationCapabilities holds the NodeCapabilities JSON on a Lease.
	AnnotationCapabilities = "sidewatch.io/capabilities"
	// DefaultHeartbeatSeconds is the lease duration agents use by default.
	DefaultHeartbeatSeconds = 40
)

// HeartbeatLeaseName is the name of the heartbeat Lease of a node.
func HeartbeatLeaseName(node string) string { return HeartbeatLeasePrefix + node }

// NodeCapabilities is what a node agent can observe on its node. It travels
// as JSON in the heartbeat Lease's AnnotationCapabilities annotation.
// +kubebuilder:object:generate=true
type NodeCapabilities struct {
	// Node is the node's name.
	Node string `json:"node"`
	// AgentVersion is the agent's build version.
	AgentVersion string `json:"agentVersion,omitempty"`
	// Monitorable is true when the agent can watch VMIs on this node with
	// at least one signal that detects attacks.
	Monitorable bool `json:"monitorable"`
	// Reason is an UnmonitoredNode reason when Monitorable is false.
	Reason string `json:"reason,omitempty"`
	// Message explains Reason, e.g. "node n1: no hardware counters".
	Message string `json:"message,omitempty"`
	// PMU describes the hardware counters.
	PMU PMUCapabilities `json:"pmu"`
	// Signals lists every signal the detectors use and whether it works.
	Signals []SignalStatus `json:"signals,omitempty"`
	// EBPF lists the eBPF programs and whether they loaded.
	EBPF []ProgramStatus `json:"ebpf,omitempty"`
	// PerfEventParanoid is /proc/sys/kernel/perf_event_paranoid.
	PerfEventParanoid int `json:"perfEventParanoid"`
	// Capabilities are the Linux capabilities the agent holds (CAP_PERFMON…).
	Capabilities []string `json:"capabilities,omitempty"`
	// FileDescriptors is the agent's descriptor budget.
	FileDescriptors FDBudget `json:"fileDescriptors"`
	// VMIs counts the VMIs the agent watches.
	VMIs int32 `json:"vmis"`
	// VCPUs counts the vCPU threads it watches.
	VCPUs int32 `json:"vcpus"`
}

// PMUCapabilities describes a node's performance monitoring unit.
type PMUCapabilities struct {
	// Present is true when hardware counters can be opened at all.
	Present bool `json:"present"`
	// Vendor is GenuineIntel, AuthenticAMD, ...
	Vendor string `json:"vendor,omitempty"`
	// Family, Model and Stepping from CPUID.
	Family   int `json:"family,omitempty"`
	Model    int `json:"model,omitempty"`
	Stepping int `json:"stepping,omitempty"`
	// ModelName is the CPU's marketing name.
	ModelName string `json:"modelName,omitempty"`
	// Microcode is the microcode revision.
	Microcode string `json:"microcode,omitempty"`
	// GuestOnlyCounting is true when exclude_host counting works.
	GuestOnlyCounting bool `json:"guestOnlyCounting"`
	// GuestOwnsPMU is true when KVM passes the PMU to guests, so the host
	// cannot count guest events (perf_event_open fails with EOPNOTSUPP).
	GuestOwnsPMU bool `json:"guestOwnsPMU,omitempty"`
	// BranchStack is true when the host can record the guest's branches
	// (Intel LBR, AMD BRS/LbrExtV2) on counter overflow.
	BranchStack bool `json:"branchStack"`
	// Events lists each counter event and how it is encoded here.
	Events []EventCapability `json:"events,omitempty"`
	// Reason explains why the PMU is absent or limited.
	Reason string `json:"reason,omitempty"`
}

// EventCapability is one counter event on one node.
type EventCapability struct {
	// Event is the sidewatch event name.
	Event CounterEvent `json:"event"`
	// Available is true when the event can be counted for guests here.
	Available bool `json:"available"`
	// Encoding is how it is opened, e.g. "raw:0x412e" or "hardware:cache-misses".
	Encoding string `json:"encoding,omitempty"`
	// PMUEventName is the vendor's event name from pmu-events.
	PMUEventName string `json:"pmuEventName,omitempty"`
	// Reason explains why it is unavailable.
	Reason string `json:"reason,omitempty"`
}

// SignalStatus is one input of the detectors.
type SignalStatus struct {
	// Name of the signal, e.g. "bus_locks", "cosched", "guest_branches".
	Name string `json:"name"`
	// Available says whether the node provides it.
	Available bool `json:"available"`
	// Source is where it comes from, e.g. "pmu", "ebpf:kvm_exit".
	Source string `json:"source,omitempty"`
	// Reason explains why it is unavailable.
	Reason string `json:"reason,omitempty"`
}

// ProgramStatus is one eBPF program.
type ProgramStatus struct {
	// Name of the program.
	Name string `json:"name"`
	// Loaded is true when it loaded and attached.
	Loaded bool `json:"loaded"`
	// Reason explains a failure, naming the missing hook.
	Reason string `json:"reason,omitempty"`
}

// FDBudget is the agent's file-descriptor use.
type FDBudget struct {
	// Limit is RLIMIT_NOFILE's soft limit.
	Limit uint64 `json:"limit"`
	// Open is how many descriptors are open.
	Open uint64 `json:"open"`
	// PerfEvents is how many of them are perf events.
	PerfEvents uint64 `json:"perfEvents"`
}
