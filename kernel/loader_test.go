//go:build linux && amd64

package kernel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/sidewatch/sidewatch/kernel/probe"
)

// The tests load every program into the running kernel: they need root
// (CAP_BPF, CAP_PERFMON). A verifier rejection fails them.

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("skipped: loading eBPF programs needs root (CAP_BPF and CAP_PERFMON); euid is %d", os.Geteuid())
	}
}

func mustLoad(t testing.TB, opts Options) *Loader {
	t.Helper()
	requireRoot(t)
	l, err := Load(context.Background(), opts)
	if err != nil {
		t.Fatalf("Load: %+v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// TestLoadEveryProgram: every program either loads and attaches, or fails
// only because its hook is missing, and then Status names the hook. Hooks
// this kernel has must attach.
func TestLoadEveryProgram(t *testing.T) {
	l := mustLoad(t, Options{})
	st := l.Status()
	want := []struct {
		program string
		hook    string // named in the reason when it is missing
		probe   string // when this probe says available, the program must attach
	}{
		{ProgramKVMExit, "kvm:kvm_exit", probe.TracepointKVMExit},
		{ProgramSplitLock, "handle_guest_split_lock", ""},
		{ProgramHostBusLock, "handle_bus_lock", ""},
		{ProgramSchedSwitch, "sched_switch", probe.TracepointSchedSwitch},
		{ProgramSampler, "perf_event", probe.PerfEventProgram},
	}
	if len(st.Programs) != len(want) {
		t.Fatalf("Status lists %d programs, want %d: %+v", len(st.Programs), len(want), st.Programs)
	}
	for _, w := range want {
		ps, ok := st.Program(w.program)
		if !ok {
			t.Errorf("Status has no program %s", w.program)
			continue
		}
		err := l.ProgramErr(w.program)
		if ps.Loaded != (err == nil) {
			t.Errorf("%s: Loaded=%v but ProgramErr=%v", w.program, ps.Loaded, err)
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, ErrHookMissing) {
			t.Errorf("%s did not load for a reason other than a missing hook (a verifier rejection?): %+v", w.program, err)
		}
		if !strings.Contains(ps.Reason, w.hook) {
			t.Errorf("%s: reason %q does not name the hook %s", w.program, ps.Reason, w.hook)
		}
		if w.probe != "" && probe.Check(w.probe) == nil {
			t.Errorf("%s: probe %s says the hook exists, but the program did not attach: %v", w.program, w.probe, err)
		}
	}
	for _, name := range []string{SignalBusLocks, SignalSplitLocks, SignalHostBusLocks, SignalCoScheduling, SignalSampleBins} {
		sig, ok := st.Signal(name)
		if !ok {
			t.Errorf("Status has no signal %s", name)
			continue
		}
		if !sig.Available && sig.Reason == "" {
			t.Errorf("signal %s is unavailable without a reason", name)
		}
		t.Logf("signal %s available=%v source=%s reason=%q", name, sig.Available, sig.Source, sig.Reason)
	}
}

// TestSplitLockHooksAttach attaches the split-lock and host bus-lock hooks
// and checks they are linked to their functions.
func TestSplitLockHooksAttach(t *testing.T) {
	l := mustLoad(t, Options{})
	for _, prog := range []string{ProgramSplitLock, ProgramHostBusLock} {
		t.Run(prog, func(t *testing.T) {
			if err := l.ProgramErr(prog); err != nil {
				if errors.Is(err, ErrHookMissing) {
					t.Skipf("skipped: this kernel cannot hook it, and the loader says so: %v", err)
				}
				t.Fatalf("%s: %+v", prog, err)
			}
			st := l.state(prog)
			if st.method != "fentry" && st.method != "kprobe" {
				t.Fatalf("%s attached by %q, want fentry or kprobe", prog, st.method)
			}
		})
	}
}

// TestProgramBodiesVerify loads the variants the loader may not load here:
// the kprobe programs (loaded, not attached: kprobe program loading needs
// no kprobe support) and the fentry programs' bodies retargeted at
// tp_btf/sched_switch, for kernels that refuse fentry. Their code is then
// verified by this kernel even where the hooks cannot attach.
func TestProgramBodiesVerify(t *testing.T) {
	requireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	spec, err := loadBuslock()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"split_lock_kprobe", "host_bus_lock_kprobe", "split_lock", "host_bus_lock", "kvm_exit"} {
		t.Run(name, func(t *testing.T) {
			cs := spec.Copy()
			for p := range cs.Programs {
				if p != name {
					delete(cs.Programs, p)
				}
			}
			ps := cs.Programs[name]
			retargeted := false
			if ps.Type == ebpf.Tracing && ps.AttachType == ebpf.AttachTraceFEntry {
				// Try the real fentry first; retarget only if refused.
				coll, err := ebpf.NewCollection(cs)
				if err == nil {
					coll.Close()
					return
				}
				if !errors.Is(err, unix.EPERM) {
					t.Fatalf("fentry %s: %+v", name, err)
				}
				ps.AttachType, ps.AttachTo = ebpf.AttachTraceRawTp, "sched_switch"
				retargeted = true
			}
			coll, err := ebpf.NewCollection(cs)
			if err != nil {
				t.Fatalf("load %s (retargeted=%v): %+v", name, retargeted, err)
			}
			coll.Close()
		})
	}
}

// vcpuImage is a synthetic guest-state layout in this process's memory:
// the kvm_exit program reads it through the vCPU pointer when
// BPF_PROG_TEST_RUN hands it a user address.
type vcpuImage struct {
	mem    []byte
	layout KVMLayout
}

func newVCPUImage(t *testing.T, layout KVMLayout) *vcpuImage {
	t.Helper()
	// vCPU, struct kvm, vmcb: one 16 KiB region each (struct kvm's
	// bus-lock flag sits a few KiB in).
	mem, err := unix.Mmap(-1, 0, 3*16384, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	v := &vcpuImage{mem: mem, layout: layout}
	if layout.KVMBusLockEnabled >= 16384 || layout.VMXExitReason >= 16384 || layout.SVMVMCB >= 16384 || layout.VMCBExitCode >= 16384 {
		t.Fatalf("layout offsets exceed the synthetic image: %+v", layout)
	}
	binary.LittleEndian.PutUint64(v.vcpu()[layout.VCPUKVM:], v.addr(16384))
	binary.LittleEndian.PutUint64(v.vcpu()[layout.SVMVMCB:], v.addr(2*16384))
	return v
}

func (v *vcpuImage) addr(off int) uint64 { return uint64(uintptr(unsafe.Pointer(&v.mem[off]))) }
func (v *vcpuImage) vcpu() []byte        { return v.mem[:16384] }
func (v *vcpuImage) kvm() []byte         { return v.mem[16384 : 2*16384] }
func (v *vcpuImage) vmcb() []byte        { return v.mem[2*16384:] }

func (v *vcpuImage) setBusLockExitsOn(on bool) {
	b := byte(0)
	if on {
		b = 1
	}
	v.kvm()[v.layout.KVMBusLockEnabled] = b
}

func (v *vcpuImage) setExit(isa uint64, reason uint32) {
	switch isa {
	case kvmISAVMX:
		binary.LittleEndian.PutUint32(v.vcpu()[v.layout.VMXExitReason:], reason)
	case kvmISASVM:
		binary.LittleEndian.PutUint32(v.vmcb()[v.layout.VMCBExitCode:], reason)
	}
}

const (
	kvmISAVMX = 1
	kvmISASVM = 2
)

// syntheticLayout uses this kernel's real struct kvm_vcpu and struct kvm
// offsets where its BTF has them (KVM is built in here) and made-up ones
// for the vendor modules' structs, which this machine does not have.
func syntheticLayout() KVMLayout {
	l := KVMLayout{
		VMX: true, VMXExitReason: 0x1a0,
		SVM: true, SVMVMCB: 0x1a8, VMCBExitCode: 0x70,
		BusLockEnabled: true, VCPUKVM: 0, KVMBusLockEnabled: 0xcf8,
	}
	if spec, err := btf.LoadKernelSpec(); err == nil {
		if real := ResolveKVMLayout(spec); real.BusLockEnabled {
			l.VCPUKVM, l.KVMBusLockEnabled = real.VCPUKVM, real.KVMBusLockEnabled
		}
	}
	return l
}

// TestKVMExitCountsBusLockExits drives the kvm_exit program, attached for
// real to kvm:kvm_exit (which never fires on a machine without hardware
// virtualisation), with synthetic VMX and SVM exits through
// BPF_PROG_TEST_RUN, and checks the per-thread counts by exit reason.
func TestKVMExitCountsBusLockExits(t *testing.T) {
	layout := syntheticLayout()
	l := mustLoad(t, Options{KVMLayout: &layout})
	if st := l.state(ProgramKVMExit); !st.loaded || st.method != "raw_tp" {
		t.Fatalf("kvm_exit not attached to kvm:kvm_exit: %+v", st)
	}
	if l.kvmExit == nil {
		t.Fatal("kvm_exit program not loaded")
	}

	cases := []struct {
		name    string
		isa     uint64
		reason  uint32
		exits   uint64 // want BusLockExits
		coinc   uint64 // want BusLockCoincident
		counted bool   // LastExitReason should become reason
	}{
		// VMX exit reason 74 is EXIT_REASON_BUS_LOCK.
		{"vmx bus lock", kvmISAVMX, 74, 1, 0, true},
		// HLT: not a bus lock.
		{"vmx hlt", kvmISAVMX, 12, 0, 0, false},
		// EPT violation that also saw a bus lock (bit 26).
		{"vmx ept violation with bus_lock_detected", kvmISAVMX, 48 | 1<<26, 0, 1, true},
		// A failed VM entry's reason means nothing.
		{"vmx failed vmentry", kvmISAVMX, 74 | 1<<31, 0, 0, false},
		// External interrupt.
		{"vmx external interrupt", kvmISAVMX, 1, 0, 0, false},
		// SVM_EXIT_BUS_LOCK.
		{"svm bus lock", kvmISASVM, 0xa5, 1, 0, true},
		// SVM_EXIT_HLT and SVM_EXIT_NPF.
		{"svm hlt", kvmISASVM, 0x78, 0, 0, false},
		{"svm npf", kvmISASVM, 0x400, 0, 0, false},
		// 74 under SVM is SVM_EXIT_READ_DR10: not a bus lock.
		{"svm 74", kvmISASVM, 74, 0, 0, false},
		// An ISA the program does not know.
		{"unknown isa", 3, 74, 0, 0, false},
	}

	for _, busLockOn := range []bool{true, false} {
		t.Run(fmt.Sprintf("bus-lock-exits-on=%v", busLockOn), func(t *testing.T) {
			// BPF_PROG_TEST_RUN runs in the calling thread, so counts land
			// on that thread: a fresh one per subtest.
			th := startPinned(t, 0)
			vmi := fmt.Sprintf("ns/vm-%v", busLockOn)
			if err := l.WatchThread(th.tid, vmi); err != nil {
				t.Fatal(err)
			}
			img := newVCPUImage(t, layout)
			img.setBusLockExitsOn(busLockOn)
			for _, c := range cases {
				img.setExit(c.isa, c.reason)
				var runErr error
				th.do(func() {
					for range 3 {
						ret, err := l.kvmExit.Run(&ebpf.RunOptions{Context: []uint64{img.addr(0), c.isa}})
						if err == nil && ret != 0 {
							err = fmt.Errorf("returned %d", ret)
						}
						runErr = errors.Join(runErr, err)
					}
				})
				if runErr != nil {
					t.Fatalf("%s: run kvm_exit: %v", c.name, runErr)
				}
				got := lockCountsOf(t, l, th.tid)
				if got.BusLockExits != 3*c.exits || got.BusLockCoincident != 3*c.coinc || got.SplitLocks != 0 || got.HostBusLocks != 0 {
					t.Errorf("%s: got exits=%d coincident=%d split=%d host=%d, want exits=%d coincident=%d",
						c.name, got.BusLockExits, got.BusLockCoincident, got.SplitLocks, got.HostBusLocks, 3*c.exits, 3*c.coinc)
				}
				if c.counted && got.LastExitReason != c.reason {
					t.Errorf("%s: LastExitReason = %#x, want %#x", c.name, got.LastExitReason, c.reason)
				}
				if got.VMI != vmi {
					t.Errorf("%s: VMI = %q, want %q", c.name, got.VMI, vmi)
				}
				if !got.KVMExits {
					t.Errorf("%s: KVMExits = false after kvm_exit ran in this thread", c.name)
				}
				if got.BusLockExitEnabled != busLockOn {
					t.Errorf("%s: BusLockExitEnabled = %v, want %v (read through vcpu->kvm)", c.name, got.BusLockExitEnabled, busLockOn)
				}
			}
			if err := l.ForgetThread(th.tid); err != nil {
				t.Fatal(err)
			}
		})
	}

	// Another thread saw nothing.
	counts, err := l.ReadLockCounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range counts {
		if c.BusLockExits+c.BusLockCoincident != 0 {
			t.Errorf("unexpected counts after the runs: %+v", c)
		}
	}

	// Without a layout the program counts nothing, whatever the reason.
	t.Run("no layout", func(t *testing.T) {
		l := mustLoad(t, Options{KVMLayout: &KVMLayout{}})
		th := startPinned(t, 0)
		if err := l.WatchThread(th.tid, "ns/x"); err != nil {
			t.Fatal(err)
		}
		img := newVCPUImage(t, layout)
		img.setBusLockExitsOn(true)
		img.setExit(kvmISAVMX, 74)
		img.setExit(kvmISASVM, 0xa5)
		var runErr error
		th.do(func() {
			for _, isa := range []uint64{kvmISAVMX, kvmISASVM} {
				_, err := l.kvmExit.Run(&ebpf.RunOptions{Context: []uint64{img.addr(0), isa}})
				runErr = errors.Join(runErr, err)
			}
		})
		if runErr != nil {
			t.Fatal(runErr)
		}
		got := lockCountsOf(t, l, th.tid)
		if got.BusLockExits != 0 || !got.KVMExits || got.BusLockExitEnabled {
			t.Errorf("without a layout: %+v, want no exits counted, KVMExits noted, no bus-lock flag read", got)
		}
	})
}

// lockCountsOf reads the lock counts and returns tid's.
func lockCountsOf(t *testing.T, l *Loader, tid int) LockCounts {
	t.Helper()
	counts, err := l.ReadLockCounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range counts {
		if c.TID == tid {
			return c
		}
	}
	return LockCounts{TID: tid}
}

// TestForgetThreadReportsFinalCounts: after ForgetThread, the next read
// reports what was counted since the previous read, then the thread is gone.
func TestForgetThreadReportsFinalCounts(t *testing.T) {
	layout := syntheticLayout()
	l := mustLoad(t, Options{KVMLayout: &layout})
	th := startPinned(t, 0)
	tid := th.tid
	if err := l.WatchThread(tid, "ns/a"); err != nil {
		t.Fatal(err)
	}
	img := newVCPUImage(t, layout)
	img.setExit(kvmISAVMX, 74)
	run := func() {
		var err error
		th.do(func() { _, err = l.kvmExit.Run(&ebpf.RunOptions{Context: []uint64{img.addr(0), kvmISAVMX}}) })
		if err != nil {
			t.Fatal(err)
		}
	}
	run()
	if got := lockCountsOf(t, l, tid); got.BusLockExits != 1 {
		t.Fatalf("first read: %+v, want 1 exit", got)
	}
	run()
	run()
	if err := l.ForgetThread(tid); err != nil {
		t.Fatal(err)
	}
	if got := lockCountsOf(t, l, tid); got.BusLockExits != 2 || got.VMI != "ns/a" {
		t.Fatalf("read after ForgetThread: %+v, want the final 2 exits under ns/a", got)
	}
	if got := lockCountsOf(t, l, tid); got.BusLockExits != 0 || got.VMI != "" {
		t.Fatalf("second read after ForgetThread: %+v, want nothing", got)
	}
	if l.Watched() != 0 {
		t.Fatalf("Watched() = %d after ForgetThread", l.Watched())
	}
}

func TestWatchThreadErrors(t *testing.T) {
	l := mustLoad(t, Options{MaxThreads: 2})
	for _, c := range []struct {
		tid  int
		vmi  string
		want string
	}{
		{0, "a", "not a thread id"},
		{-5, "a", "not a thread id"},
		{1 << 40, "a", "not a thread id"},
		{100, "", "vmi is empty"},
	} {
		if err := l.WatchThread(c.tid, c.vmi); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("WatchThread(%d, %q) = %v, want an error containing %q", c.tid, c.vmi, err, c.want)
		}
	}
	if err := l.WatchThread(100, "a"); err != nil {
		t.Fatal(err)
	}
	if err := l.WatchThread(101, "b"); err != nil {
		t.Fatal(err)
	}
	err := l.WatchThread(102, "b")
	if !errors.Is(err, ErrTableFull) || !strings.Contains(err.Error(), "MaxThreads") {
		t.Fatalf("third thread with MaxThreads=2: %v, want ErrTableFull naming MaxThreads", err)
	}
	// Re-registering a watched thread is an update, not a new entry.
	if err := l.WatchThread(101, "a"); err != nil {
		t.Fatalf("moving thread 101 to VMI a: %v", err)
	}
	if err := l.ForgetThread(999); err != nil {
		t.Fatalf("forgetting an unknown thread: %v", err)
	}
}

func TestClosedLoader(t *testing.T) {
	l := mustLoad(t, Options{})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for name, err := range map[string]error{
		"WatchThread":   l.WatchThread(1, "a"),
		"ForgetThread":  l.ForgetThread(1),
		"AttachSampler": l.AttachSampler(0, 0),
		"DetachSampler": l.DetachSampler(0),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if _, err := l.ReadLockCounts(); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadLockCounts after Close: %v", err)
	}
	if _, err := l.ReadCoScheduling(); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadCoScheduling after Close: %v", err)
	}
	if _, err := l.ReadSampleBins(); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadSampleBins after Close: %v", err)
	}
}

// openFDs lists this process's open file descriptors.
func openFDs(t testing.TB) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+" -> "+target)
	}
	slices.Sort(out)
	return out
}

// TestCloseReleasesEverything: after Close (with a sampler attached and
// threads watched), no descriptor of the Loader is left open.
func TestCloseReleasesEverything(t *testing.T) {
	requireRoot(t)
	// The first Load in a process opens lasting descriptors of its own
	// (cached kernel BTF); take the baseline after one.
	warm, err := Load(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	warm.Close()
	_ = probe.Run()

	before := openFDs(t)
	l, err := Load(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	pfd := openTaskClock(t, 0, 1_000_000)
	if err := l.AttachSampler(pfd, 1); err != nil {
		t.Fatal(err)
	}
	if err := l.WatchThread(unix.Gettid(), "a"); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	unix.Close(pfd)
	if after := openFDs(t); !slices.Equal(before, after) {
		t.Fatalf("descriptors left open after Close:\nbefore %v\nafter  %v", before, after)
	}
}

// TestLoadFailureCleansUp: a failing step part-way through Load closes
// everything loaded before it.
func TestLoadFailureCleansUp(t *testing.T) {
	requireRoot(t)
	warm, err := Load(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	warm.Close()
	before := openFDs(t)
	boom := errors.New("boom")
	_, err = load(context.Background(), Options{}, []loadStep{loadBuslockStep, loadCoschedStep, func(context.Context, *Loader, *btf.Spec) error { return boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("load = %v, want boom", err)
	}
	if after := openFDs(t); !slices.Equal(before, after) {
		t.Fatalf("descriptors left open after a failed Load:\nbefore %v\nafter  %v", before, after)
	}
}

func TestLoadRejectsBadOptions(t *testing.T) {
	for _, c := range []struct {
		opts Options
		want string
	}{
		{Options{MaxThreads: -1}, "Options.MaxThreads = -1"},
		{Options{MaxPairs: 1 << 30}, "Options.MaxPairs"},
		{Options{IPBinBytes: 48}, "Options.IPBinBytes = 48: must be a power of two"},
		{Options{SampleSlot: 1}, "Options.SampleSlot = 1ns"},
	} {
		_, err := Load(context.Background(), c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load(%+v) = %v, want an error containing %q", c.opts, err, c.want)
		}
	}
}

// TestLoadRejectsImpossibleTopology: a topology naming a CPU the kernel
// does not have fails Load with a clear error (and loads nothing).
func TestLoadRejectsImpossibleTopology(t *testing.T) {
	requireRoot(t)
	bad := Topology{CPUs: []CPU{{ID: 4000, Siblings: []int{4000}}}}
	_, err := Load(context.Background(), Options{Topology: &bad})
	if err == nil || !strings.Contains(err.Error(), "CPU 4000") {
		t.Fatalf("Load with a topology naming CPU 4000: %v, want an error naming it", err)
	}
}

// TestLockTableFull: with room for one thread, a second thread's bus-lock
// exits are dropped and counted.
func TestLockTableFull(t *testing.T) {
	layout := syntheticLayout()
	l := mustLoad(t, Options{KVMLayout: &layout, MaxThreads: 1})
	img := newVCPUImage(t, layout)
	img.setExit(kvmISAVMX, 74)
	var tids []int
	for range 2 {
		th := startPinned(t, 0)
		tids = append(tids, th.tid)
		var err error
		th.do(func() { _, err = l.kvmExit.Run(&ebpf.RunOptions{Context: []uint64{img.addr(0), kvmISAVMX}}) })
		if err != nil {
			t.Fatal(err)
		}
	}
	counts, err := l.ReadLockCounts()
	if err != nil {
		t.Fatal(err)
	}
	if len(counts) != 1 || counts[0].TID != tids[0] || counts[0].BusLockExits != 1 {
		t.Errorf("counts %+v, want one exit of thread %d only", counts, tids[0])
	}
	stats, err := l.ReadStats()
	if err != nil {
		t.Fatal(err)
	}
	if stats.LockTableFull == 0 {
		t.Errorf("stats %+v: the second thread's exit is not counted as dropped", stats)
	}
}
