// Package probe answers, once per process, what the node's kernel and CPU
// offer sidewatch's eBPF programs: program and link types, the hooks the
// programs attach to, software sampling, the KVM bus-lock exit capability
// and the CPU's bus/split-lock detection.
//
// One table of probes ([]Probe{Name, Fn}) feeds the node heartbeat's
// capabilities, the agent's startup log line and `sidewatch-agent probe`.
// A probe's result is memoized: the first call runs it, later calls return
// the same answer.
//
// As with cilium/ebpf's features package, a nil error means available, an
// error wrapping ErrNotSupported means absent (its text names what is
// missing), and any other error is inconclusive (e.g. no permission).
package probe

import (
	"errors"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
)

// ErrNotSupported marks a feature the node does not have.
var ErrNotSupported = ebpf.ErrNotSupported

// Probe names.
const (
	// KernelBTF: /sys/kernel/btf/vmlinux parses (CO-RE, tp_btf, fentry).
	KernelBTF = "kernel-btf"
	// RawTracepoint: BPF_PROG_TYPE_RAW_TRACEPOINT programs load.
	RawTracepoint = "program:raw_tracepoint"
	// Tracing: BPF_PROG_TYPE_TRACING programs load (tp_btf on
	// sched_switch, what the co-scheduling program is).
	Tracing = "program:tracing"
	// Fentry: fentry programs load (on a function every kernel has).
	Fentry = "program:fentry"
	// PerfEventProgram: BPF_PROG_TYPE_PERF_EVENT programs load.
	PerfEventProgram = "program:perf_event"
	// SoftwareSampling: a sampling task-clock perf event opens on this
	// thread and a perf_event program attaches to it with a bpf_link.
	SoftwareSampling = "perf:software-sampling"
	// TracepointKVMExit: the kvm:kvm_exit tracepoint exists.
	TracepointKVMExit = "tracepoint:kvm:kvm_exit"
	// TracepointSchedSwitch: the sched:sched_switch tracepoint has BTF.
	TracepointSchedSwitch = "tracepoint:sched:sched_switch"
	// FuncGuestSplitLock: handle_guest_split_lock exists (fentry needs it
	// in BTF, kprobe in kallsyms).
	FuncGuestSplitLock = "function:handle_guest_split_lock"
	// FuncBusLock: handle_bus_lock exists.
	FuncBusLock = "function:handle_bus_lock"
	// KVMBusLockExit: KVM offers KVM_CAP_X86_BUS_LOCK_EXIT with
	// KVM_BUS_LOCK_DETECTION_EXIT, so a VMM can turn on bus-lock exits.
	KVMBusLockExit = "kvm:bus-lock-exit"
	// CPUSplitLockDetect: the CPU raises #AC on split locks
	// (/proc/cpuinfo flag split_lock_detect).
	CPUSplitLockDetect = "cpu:split_lock_detect"
	// CPUBusLockDetect: the CPU raises #DB after bus locks
	// (/proc/cpuinfo flag bus_lock_detect).
	CPUBusLockDetect = "cpu:bus_lock_detect"
)

// Probe is one question about the node.
type Probe struct {
	Name string
	Fn   func() error
}

// Result is a probe's answer.
type Result struct {
	Name string
	// Err is nil when available; see the package doc.
	Err error
}

// Available reports whether the probed feature is there.
func (r Result) Available() bool { return r.Err == nil }

// Reason is the error text, "" when available.
func (r Result) Reason() string {
	if r.Err == nil {
		return ""
	}
	return r.Err.Error()
}

// Absent reports whether the probe found the feature missing (as opposed to
// available or inconclusive).
func (r Result) Absent() bool { return errors.Is(r.Err, ErrNotSupported) }

// Probes is the table, in report order. Each Fn is memoized.
func Probes() []Probe { return slices.Clone(table()) }

// Run runs every probe (at most once each per process) and returns the
// results in table order.
func Run() []Result {
	t := table()
	out := make([]Result, 0, len(t))
	for _, p := range t {
		out = append(out, Result{Name: p.Name, Err: p.Fn()})
	}
	return out
}

// Check runs one probe by name.
func Check(name string) error {
	for _, p := range table() {
		if p.Name == name {
			return p.Fn()
		}
	}
	return errors.New("probe: no probe named " + name)
}

// Summary is one log line: available probes, then missing ones.
func Summary(results []Result) string {
	var have, lack []string
	for _, r := range results {
		if r.Available() {
			have = append(have, r.Name)
		} else {
			lack = append(lack, r.Name)
		}
	}
	return "available: " + strings.Join(have, ",") + "; unavailable: " + strings.Join(lack, ",")
}

var table = sync.OnceValue(func() []Probe {
	t := []Probe{
		{KernelBTF, haveKernelBTF},
		{RawTracepoint, haveRawTracepoint},
		{Tracing, haveTracing},
		{Fentry, haveFentry},
		{PerfEventProgram, havePerfEventProgram},
		{SoftwareSampling, haveSoftwareSampling},
		{TracepointKVMExit, haveKVMExitTracepoint},
		{TracepointSchedSwitch, haveSchedSwitch},
		{FuncGuestSplitLock, func() error { return haveFunction("handle_guest_split_lock") }},
		{FuncBusLock, func() error { return haveFunction("handle_bus_lock") }},
		{KVMBusLockExit, haveKVMBusLockExit},
		{CPUSplitLockDetect, func() error { return haveCPUFlag("split_lock_detect") }},
		{CPUBusLockDetect, func() error { return haveCPUFlag("bus_lock_detect") }},
	}
	for i := range t {
		t[i].Fn = sync.OnceValue(t[i].Fn)
	}
	return t
})
