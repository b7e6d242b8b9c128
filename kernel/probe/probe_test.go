package probe

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
)

func TestTableNamesEveryProbeOnce(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range Probes() {
		if p.Name == "" || p.Fn == nil || seen[p.Name] {
			t.Errorf("bad or duplicate probe %q", p.Name)
		}
		seen[p.Name] = true
	}
	for _, name := range []string{KernelBTF, RawTracepoint, Tracing, Fentry, PerfEventProgram, SoftwareSampling, TracepointKVMExit,
		TracepointSchedSwitch, FuncGuestSplitLock, FuncBusLock, KVMBusLockExit, CPUSplitLockDetect, CPUBusLockDetect} {
		if !seen[name] {
			t.Errorf("probe %s missing from the table", name)
		}
	}
	if err := Check("no-such-probe"); err == nil {
		t.Error("Check of an unknown probe did not fail")
	}
}

// TestRunIsMemoized: results are computed once; every unavailable probe
// explains itself.
func TestRunIsMemoized(t *testing.T) {
	first, second := Run(), Run()
	for i, r := range first {
		if !errors.Is(second[i].Err, r.Err) || second[i].Reason() != r.Reason() {
			t.Errorf("%s: second run %v, first %v", r.Name, second[i].Err, r.Err)
		}
		if !r.Available() && r.Reason() == "" {
			t.Errorf("%s unavailable without a reason", r.Name)
		}
		t.Logf("%-34s available=%-5v absent=%-5v %s", r.Name, r.Available(), r.Absent(), r.Reason())
	}
	if s := Summary(first); !strings.HasPrefix(s, "available: ") || !strings.Contains(s, "; unavailable: ") {
		t.Errorf("Summary = %q", s)
	}
}

// TestThisMachine checks what the development machines are known to have
// (root, BTF, a kernel with KVM built in). Elsewhere it only logs.
func TestThisMachine(t *testing.T) {
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skipf("skipped: probing eBPF needs root on Linux (GOOS=%s, euid=%d)", runtime.GOOS, os.Geteuid())
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skipf("skipped: no kernel BTF here (%v), the programs cannot load", err)
	}
	for _, name := range []string{KernelBTF, RawTracepoint, Tracing, PerfEventProgram, SoftwareSampling, TracepointSchedSwitch} {
		if err := Check(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := Check(FuncGuestSplitLock); err == nil {
		ok, err := InKallsyms("handle_guest_split_lock")
		t.Logf("handle_guest_split_lock in kallsyms: %v %v", ok, err)
	}
}

func TestInKallsyms(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("skipped: /proc/kallsyms is Linux only")
	}
	if ok, err := InKallsyms("schedule"); err != nil || !ok {
		t.Errorf("schedule not found in kallsyms: %v %v", ok, err)
	}
	if ok, err := InKallsyms("sidewatch_no_such_function"); err != nil || ok {
		t.Errorf("made-up symbol found: %v %v", ok, err)
	}
}
