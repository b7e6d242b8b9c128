//go:build linux

package probe

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Linux ABI constants x/sys/unix does not name.
const (
	kvmCheckExtension       = 0xae03 // _IO(KVMIO, 0x03)
	kvmCapX86BusLockExit    = 193
	kvmBusLockDetectionExit = 1 << 1
)

var kernelSpec = sync.OnceValues(btf.LoadKernelSpec)

func haveKernelBTF() error {
	if _, err := kernelSpec(); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("kernel has no BTF at /sys/kernel/btf/vmlinux (needs CONFIG_DEBUG_INFO_BTF): %w", ErrNotSupported)
		}
		return fmt.Errorf("read kernel BTF: %w", err)
	}
	return nil
}

func haveRawTracepoint() error {
	return programType(ebpf.RawTracepoint, "raw_tracepoint")
}

func haveTracing() error {
	return loadTracing(ebpf.AttachTraceRawTp, "sched_switch", "tp_btf")
}

func haveFentry() error {
	return loadTracing(ebpf.AttachTraceFEntry, "schedule", "fentry")
}

// loadTracing loads (without attaching) a trivial tracing program.
func loadTracing(at ebpf.AttachType, target, what string) error {
	if err := haveKernelBTF(); err != nil {
		return err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.Tracing,
		AttachType:   at,
		AttachTo:     target,
		License:      "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	switch {
	case err == nil:
		return prog.Close()
	case errors.Is(err, unix.EPERM) && os.Geteuid() == 0:
		return fmt.Errorf("the kernel refuses %s programs even to root (kernel lockdown or an LSM): %w", what, ErrNotSupported)
	case errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("kernel cannot load %s programs (%v): %w", what, err, ErrNotSupported)
	default:
		return fmt.Errorf("load a %s program on %s: %w", what, target, err)
	}
}

func havePerfEventProgram() error {
	return programType(ebpf.PerfEvent, "perf_event")
}

func programType(pt ebpf.ProgramType, name string) error {
	err := features.HaveProgramType(pt)
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("kernel cannot load %s eBPF programs: %w", name, ErrNotSupported)
	}
	if err != nil {
		return fmt.Errorf("probe %s eBPF programs: %w", name, err)
	}
	return nil
}

// haveSoftwareSampling opens what the sampler attaches to in production
// (a sampling perf event on one thread, here a software one) and links a
// trivial perf_event program to it.
func haveSoftwareSampling() error {
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_SOFTWARE,
		Config: unix.PERF_COUNT_SW_TASK_CLOCK,
		Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Sample: 1_000_000,
		Bits:   unix.PerfBitDisabled,
	}
	fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("perf_event_open(task-clock, sampling): %v: %w", err, ErrNotSupported)
		}
		return fmt.Errorf("perf_event_open(task-clock, sampling): %w", err)
	}
	defer unix.Close(fd)

	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.PerfEvent,
		License:      "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load a perf_event program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: prog, Attach: ebpf.AttachPerfEvent})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("kernel cannot bpf_link a program to a perf event (Linux >= 5.15): %v: %w", err, ErrNotSupported)
		}
		return fmt.Errorf("bpf_link a perf_event program: %w", err)
	}
	return l.Close()
}

func haveKVMExitTracepoint() error {
	if err := haveTracepointBTF("kvm_exit", "kvm"); err == nil {
		return nil
	}
	for _, dir := range []string{"/sys/kernel/tracing/events/kvm/kvm_exit", "/sys/kernel/debug/tracing/events/kvm/kvm_exit"} {
		if _, err := os.Stat(dir); err == nil {
			return nil
		}
	}
	return fmt.Errorf("kernel has no tracepoint kvm:kvm_exit (KVM not built in and module kvm not loaded): %w", ErrNotSupported)
}

func haveSchedSwitch() error {
	if err := haveTracepointBTF("sched_switch", ""); err != nil {
		return fmt.Errorf("kernel BTF has no btf_trace_sched_switch, so tp_btf/sched_switch cannot attach: %w", err)
	}
	return nil
}

// haveTracepointBTF looks for the btf_trace_<name> typedef every tracepoint
// gets in BTF, in vmlinux and then in module's BTF.
func haveTracepointBTF(name, module string) error {
	spec, err := kernelSpec()
	if err != nil {
		return err
	}
	var td *btf.Typedef
	if spec.TypeByName("btf_trace_"+name, &td) == nil {
		return nil
	}
	if module != "" {
		if ms, err := btf.LoadKernelModuleSpec(module); err == nil && ms.TypeByName("btf_trace_"+name, &td) == nil {
			return nil
		}
	}
	return fmt.Errorf("no btf_trace_%s in kernel BTF: %w", name, ErrNotSupported)
}

func haveFunction(name string) error {
	if spec, err := kernelSpec(); err == nil {
		var fn *btf.Func
		if spec.TypeByName(name, &fn) == nil {
			return nil
		}
	}
	ok, err := InKallsyms(name)
	if err != nil {
		return fmt.Errorf("look up %s in /proc/kallsyms: %w", name, err)
	}
	if !ok {
		return fmt.Errorf("kernel has no function %s (neither in BTF nor in /proc/kallsyms): %w", name, ErrNotSupported)
	}
	return nil
}

// InKallsyms reports whether /proc/kallsyms lists a text symbol name.
func InKallsyms(name string) (bool, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return false, err
	}
	defer f.Close()
	want := []byte(" " + name)
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Bytes()
		// "ffffffff81324050 T handle_guest_split_lock" or with "\t[module]".
		if i := bytes.IndexByte(line, '\t'); i >= 0 {
			line = line[:i]
		}
		if bytes.HasSuffix(line, want) && len(line) > len(want)+2 {
			typ := line[len(line)-len(want)-1]
			if typ == 'T' || typ == 't' {
				return true, nil
			}
		}
	}
	return false, s.Err()
}

func haveKVMBusLockExit() error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("no /dev/kvm: %w", ErrNotSupported)
		}
		return fmt.Errorf("open /dev/kvm: %w", err)
	}
	defer unix.Close(fd)
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmCheckExtension, kvmCapX86BusLockExit)
	if errno != 0 {
		return fmt.Errorf("KVM_CHECK_EXTENSION(KVM_CAP_X86_BUS_LOCK_EXIT): %w", errno)
	}
	if r&kvmBusLockDetectionExit == 0 {
		return fmt.Errorf("KVM does not offer KVM_CAP_X86_BUS_LOCK_EXIT (KVM_CHECK_EXTENSION returned %d): no bus-lock VM exits on this CPU/kernel: %w", r, ErrNotSupported)
	}
	return nil
}

func haveCPUFlag(flag string) error {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return fmt.Errorf("read /proc/cpuinfo: %w", err)
	}
	flags, ok := cpuFlags(string(b))
	if !ok {
		return fmt.Errorf("/proc/cpuinfo has no flags line: %w", ErrNotSupported)
	}
	if _, ok := flags[flag]; !ok {
		return fmt.Errorf("CPU has no %s (not in /proc/cpuinfo flags): %w", flag, ErrNotSupported)
	}
	return nil
}

// cpuFlags returns the flags of the first CPU in /proc/cpuinfo text.
func cpuFlags(cpuinfo string) (map[string]struct{}, bool) {
	for line := range strings.SplitSeq(cpuinfo, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		out := map[string]struct{}{}
		for f := range strings.FieldsSeq(v) {
			out[f] = struct{}{}
		}
		return out, true
	}
	return nil, false
}
