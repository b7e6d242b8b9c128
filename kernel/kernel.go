package kernel

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Program names, as they appear in NodeCapabilities.EBPF.
const (
	// ProgramKVMExit is the raw tracepoint program on kvm:kvm_exit that
	// counts bus-lock VM exits.
	ProgramKVMExit = "kvm_exit"
	// ProgramSplitLock hooks handle_guest_split_lock (fentry, else kprobe).
	ProgramSplitLock = "split_lock"
	// ProgramHostBusLock hooks handle_bus_lock (fentry, else kprobe).
	ProgramHostBusLock = "host_bus_lock"
	// ProgramSchedSwitch is the tp_btf program on sched:sched_switch that
	// measures co-scheduling.
	ProgramSchedSwitch = "sched_switch"
	// ProgramSampler is the perf_event program that bins samples.
	ProgramSampler = "sampler"
)

// Signal names, as they appear in NodeCapabilities.Signals. Bus and split
// locks carry the names of the counter events they stand in for
// (v1alpha1.EventBusLocks, EventSplitLocks), so the agent can use them
// where the PMU lacks the event.
const (
	// SignalBusLocks: bus-lock VM exits counted by kvm_exit (Source
	// "ebpf:kvm_exit"); for the node-wide choice between these and the
	// PMU's event see BusLockSignal.
	SignalBusLocks = string(v1alpha1.EventBusLocks)
	// SignalSplitLocks: guest split-lock #AC counted by split_lock.
	SignalSplitLocks = string(v1alpha1.EventSplitLocks)
	// SignalHostBusLocks: bus-lock #DB traps of host threads (e.g. TCG
	// vCPU threads) counted by host_bus_lock.
	SignalHostBusLocks = "host_bus_locks"
	// SignalCoScheduling: co-scheduling of vCPU threads of different VMIs.
	SignalCoScheduling = "cosched"
	// SignalSampleBins: in-kernel aggregation of overflow samples.
	SignalSampleBins = "sample_bins"
)

// Errors.
var (
	// ErrNotSupported: eBPF needs Linux on amd64.
	ErrNotSupported = errors.New("kernel: eBPF programs need linux/amd64")
	// ErrHookMissing: the running kernel lacks the function or tracepoint
	// a program attaches to (or cannot attach to it); the error names it.
	ErrHookMissing = errors.New("hook missing")
	// ErrNotLoaded: the program a call needs did not load; Status says why.
	ErrNotLoaded = errors.New("program not loaded")
	// ErrTableFull: a bounded kernel map has no room; raise the named
	// Options field.
	ErrTableFull = errors.New("table full")
	// ErrClosed: the Loader was closed.
	ErrClosed = errors.New("kernel: loader closed")
)

// Options configures Load. The zero value is the defaults.
type Options struct {
	// MaxThreads bounds the vCPU threads WatchThread accepts and the
	// threads with lock counts (default 4096). When full, WatchThread
	// returns ErrTableFull and new lock counts are dropped (Stats).
	MaxThreads int
	// MaxPairs bounds the co-scheduled thread pairs kept between reads
	// (default 65536). When full, new pairs are dropped (Stats.PairsDropped);
	// pairs that did not co-run since the previous read are evicted.
	MaxPairs int
	// MaxIPBins bounds the IP bins between reads (default 65536). Each
	// read drains them; when full, samples of new bins are dropped.
	MaxIPBins int
	// MaxTimelines bounds the (thread, stream) sample timelines
	// (default 4096); idle ones are evicted at reads.
	MaxTimelines int
	// MaxSamplers bounds the perf events AttachSampler accepts
	// (default 8192).
	MaxSamplers int
	// IPBinBytes is the width of an IP bin, a power of two (default 64:
	// a cache line of code; 1 bins exact addresses).
	IPBinBytes int
	// SampleSlot is the width of a timeline slot (default 4ms). A timeline
	// holds 256 slots, so ReadSampleBins must run at least every
	// 256*SampleSlot (about 1 s by default) or slots are lost.
	SampleSlot time.Duration
	// PassSamples lets perf also record each sample in its ring buffer
	// (default: the sampler drops them, so user space is never woken).
	PassSamples bool
	// SysfsRoot is where ReadTopology looks (default "/sys").
	SysfsRoot string
	// Topology overrides the topology read from sysfs.
	Topology *Topology
	// KVMLayout overrides the offsets resolved from KVM's BTF.
	KVMLayout *KVMLayout
}

// Limits of Options fields.
const (
	maxTableEntries = 1 << 24
	timelineSlots   = 256
)

func (o Options) withDefaults() (Options, error) {
	set := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	set(&o.MaxThreads, 4096)
	set(&o.MaxPairs, 65536)
	set(&o.MaxIPBins, 65536)
	set(&o.MaxTimelines, 4096)
	set(&o.MaxSamplers, 8192)
	set(&o.IPBinBytes, 64)
	if o.SampleSlot == 0 {
		o.SampleSlot = 4 * time.Millisecond
	}
	if o.SysfsRoot == "" {
		o.SysfsRoot = "/sys"
	}
	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{
		{"MaxThreads", o.MaxThreads},
		{"MaxPairs", o.MaxPairs},
		{"MaxIPBins", o.MaxIPBins},
		{"MaxTimelines", o.MaxTimelines},
		{"MaxSamplers", o.MaxSamplers},
	} {
		if f.v < 1 || f.v > maxTableEntries {
			errs = append(errs, fmt.Errorf("kernel: Options.%s = %d: must be between 1 and %d (0 means the default)", f.name, f.v, maxTableEntries))
		}
	}
	if o.IPBinBytes < 1 || o.IPBinBytes > 1<<20 || o.IPBinBytes&(o.IPBinBytes-1) != 0 {
		errs = append(errs, fmt.Errorf("kernel: Options.IPBinBytes = %d: must be a power of two from 1 to %d (0 means 64)", o.IPBinBytes, 1<<20))
	}
	if o.SampleSlot < 10*time.Microsecond || o.SampleSlot > time.Second {
		errs = append(errs, fmt.Errorf("kernel: Options.SampleSlot = %s: must be between 10µs and 1s (0 means 4ms)", o.SampleSlot))
	}
	return o, errors.Join(errs...)
}

// LockCounts is one thread's bus and split locks since the previous
// ReadLockCounts, by source.
type LockCounts struct {
	TID int
	// VMI is the name WatchThread registered, "" for a thread nobody
	// registered (e.g. a VM not managed by KubeVirt).
	VMI string
	// SplitLocks: guest #AC on a split lock that KVM handed to the host
	// (handle_guest_split_lock).
	SplitLocks uint64
	// BusLockExits: VM exits for a bus lock (VMX reason 74, SVM 0xa5).
	BusLockExits uint64
	// BusLockCoincident: VMX exits for another reason that also reported
	// a bus lock (exit reason bit 26).
	BusLockCoincident uint64
	// HostBusLocks: bus-lock #DB traps in this thread in host user mode
	// (handle_bus_lock), e.g. a TCG vCPU emulating a locked instruction.
	HostBusLocks uint64
	// LastSplitLockIP is the guest RIP of the latest split lock.
	LastSplitLockIP uint64
	// LastHostBusLockIP is the user IP of the latest host bus-lock trap.
	LastHostBusLockIP uint64
	// LastExitReason is the raw exit reason of the latest bus-lock exit.
	LastExitReason uint32
	// KVMExits is true once kvm_exit fired in this thread: it runs a vCPU
	// under hardware KVM.
	KVMExits bool
	// ISA is "vmx" or "svm" once KVMExits is true.
	ISA string
	// BusLockExitEnabled is true when the thread's VM has
	// KVM_CAP_X86_BUS_LOCK_EXIT on, so BusLockExits is its bus-lock
	// signal; otherwise only the PMU's bus-lock event sees its bus locks.
	BusLockExitEnabled bool
}

// Thread is a vCPU thread and its VMI.
type Thread struct {
	TID int
	VMI string
}

// CoSchedule is how two vCPU threads of different VMIs shared hardware
// since the previous ReadCoScheduling.
type CoSchedule struct {
	// A and B are the threads, A.TID < B.TID.
	A, B Thread
	// SMT is how long both ran at once on SMT siblings of one core
	// (sharing L1, L2 and the core's predictors).
	SMT time.Duration
	// LLC is how long both ran at once on CPUs sharing a last-level
	// cache; it includes SMT.
	LLC time.Duration
	// Handovers counts how often one started on a CPU right after the
	// other had run there (time-sliced sharing of one CPU's caches).
	Handovers uint64
}

// IPBin counts samples whose instruction pointer fell in one bin.
type IPBin struct {
	TID    int
	Stream uint16
	// Guest: perf recorded the guest's RIP (the overflow hit the vCPU in
	// guest mode under hardware KVM).
	Guest bool
	// Kernel: the address is in the upper (kernel) half.
	Kernel bool
	// FromRegs: the event had no PERF_SAMPLE_IP (or the kernel is older
	// than 6.1), so the IP is the interrupted host register and Guest is
	// unknown.
	FromRegs bool
	// Addr is the bin's first address (IP rounded down to IPBinBytes).
	Addr  uint64
	Count uint64
}

// Timeline is one (thread, stream)'s samples per time slot.
type Timeline struct {
	TID    int
	Stream uint16
	// Start is when Counts[0]'s slot began (CLOCK_MONOTONIC) and
	// StartTime the same instant on the wall clock.
	Start     time.Duration
	StartTime time.Time
	Slot      time.Duration
	// Counts are samples per complete slot since the previous read,
	// oldest first; the slot still filling is left for the next read.
	Counts []uint32
	// LostSlots counts slots overwritten before this read (reads came
	// more than 256 slots apart); they precede Counts[0].
	LostSlots int
	// Samples and GuestSamples count samples since the previous read,
	// including the slot still filling; so per read sum(Counts) and
	// Samples differ by at most that slot, and over reads they agree.
	Samples, GuestSamples uint64
}

// SampleBins is what ReadSampleBins returns.
type SampleBins struct {
	IPs       []IPBin
	Timelines []Timeline
}

// Stats counts what the programs could not record, since Load.
type Stats struct {
	LockTableFull       uint64 // lock counts of a new thread dropped
	LockReadErrors      uint64 // vCPU state reads that faulted
	PairTableFull       uint64 // co-scheduling of a new pair dropped
	IPBinTableFull      uint64 // samples of a new IP bin dropped
	TimelineTableFull   uint64 // samples of a new timeline dropped
	UnknownSampleEvents uint64 // samples from perf events not attached via AttachSampler
}

// Status is what loaded, for the node heartbeat.
type Status struct {
	// Programs lists every program, loaded or not and why.
	Programs []v1alpha1.ProgramStatus
	// Signals lists the signals the programs provide.
	Signals []v1alpha1.SignalStatus
}

// Program returns the status of one program.
func (s Status) Program(name string) (v1alpha1.ProgramStatus, bool) {
	i := slices.IndexFunc(s.Programs, func(p v1alpha1.ProgramStatus) bool { return p.Name == name })
	if i < 0 {
		return v1alpha1.ProgramStatus{}, false
	}
	return s.Programs[i], true
}

// Signal returns the status of one signal.
func (s Status) Signal(name string) (v1alpha1.SignalStatus, bool) {
	i := slices.IndexFunc(s.Signals, func(p v1alpha1.SignalStatus) bool { return p.Name == name })
	if i < 0 {
		return v1alpha1.SignalStatus{}, false
	}
	return s.Signals[i], true
}

// BusLockSignal decides where the node's "bus_locks" signal comes from,
// given whether the PMU's bus-lock event works here (the agent's PMU probe
// knows; pmuReason says why not). Bus-lock VM exits are counted only for
// VMIs whose VMM enabled KVM_CAP_X86_BUS_LOCK_EXIT (LockCounts.
// BusLockExitEnabled); the PMU event covers the others. Split-lock #AC is a
// last resort: it sees only split locks, a subset of bus locks.
func BusLockSignal(s Status, pmu bool, pmuReason string) v1alpha1.SignalStatus {
	exits, _ := s.Signal(SignalBusLocks)
	split, _ := s.Signal(SignalSplitLocks)
	out := v1alpha1.SignalStatus{Name: SignalBusLocks}
	if pmuReason == "" && !pmu {
		pmuReason = "no PMU bus-lock event"
	}
	switch {
	case exits.Available && pmu:
		out.Available, out.Source = true, exits.Source+",pmu"
		out.Reason = "bus-lock VM exits for VMIs whose VMM enabled KVM_CAP_X86_BUS_LOCK_EXIT, the PMU's bus-lock event for the others"
	case exits.Available:
		out.Available, out.Source = true, exits.Source
		out.Reason = "only VMIs whose VMM enabled KVM_CAP_X86_BUS_LOCK_EXIT; others unseen: " + pmuReason
	case pmu:
		out.Available, out.Source = true, "pmu"
	case split.Available:
		out.Available, out.Source = true, split.Source
		out.Reason = "split locks only (a subset of bus locks): no bus-lock exits (" + exits.Reason + "); " + pmuReason
	default:
		reasons := []string{"no bus-lock exits (" + exits.Reason + ")", pmuReason}
		if split.Reason != "" {
			reasons = append(reasons, "no split-lock #AC ("+split.Reason+")")
		}
		out.Reason = strings.Join(reasons, "; ")
	}
	return out
}
