//go:build linux && amd64

package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/kernel/probe"
)

// Loader owns sidewatch's eBPF programs, their maps and links. Its methods
// are safe for concurrent use. Close releases everything.
type Loader struct {
	opts     Options
	log      logr.Logger
	topology Topology
	layout   KVMLayout
	// baseNs is CLOCK_MONOTONIC at load: timeline slot 0.
	baseNs uint64

	mu     sync.Mutex
	closed bool
	// Everything to close, links before programs before maps.
	links    []link.Link
	programs []*ebpf.Program
	maps     []*ebpf.Map
	// Per program: what happened at load.
	states []*programState

	// buslock.bpf.c
	kvmExit    *ebpf.Program
	lockCounts *ebpf.Map
	lockStats  *ebpf.Map
	prevLocks  map[uint32]buslockLockCounts
	goneLocks  map[uint32]uint32 // forgotten tid -> its VMI number, for the final report

	// cosched.bpf.c
	schedSwitch  *ebpf.Program
	threads      *ebpf.Map
	watchedBits  *ebpf.Map
	pairs        *ebpf.Map
	cpuState     *ebpf.Map
	coschedStats *ebpf.Map
	prevPairs    map[coschedPairKey]coschedPairVal
	gonePairs    map[uint32]bool
	vmis         vmiRegistry
	watched      map[uint32]uint32 // tid -> VMI number
	truncated    []int             // CPUs whose peer list exceeded maxPeers

	// sampler.bpf.c
	sample        *ebpf.Program
	samplers      *ebpf.Map
	ipBins        *ebpf.Map
	timelines     *ebpf.Map
	samplerStats  *ebpf.Map
	attached      map[int]*attachment // by perf event fd
	prevTimelines map[samplerTimelineKey]timelineMark

	status Status
}

// programState is one program's load and attach outcome.
type programState struct {
	name   string
	hook   string // e.g. "raw_tp kvm:kvm_exit"
	method string // how it attached, when it did
	loaded bool
	err    error
	note   string // e.g. why a fallback was used
}

// attachment is one perf event the sampler is linked to.
type attachment struct {
	link link.Link
	id   uint64
}

// timelineMark is how far a timeline was read.
type timelineMark struct {
	last         uint32 // last complete slot reported
	samples      uint64
	guestSamples uint64
}

// loadStep loads one object's maps and programs.
type loadStep func(ctx context.Context, l *Loader, kernelBTF *btf.Spec) error

// Load loads and attaches every program the kernel supports. A program
// whose hook is missing, or that the kernel refuses, does not fail Load: it
// is reported by Status and ProgramErr, and the calls that need it return
// ErrNotLoaded. Load fails when eBPF is unusable (no BTF, no permission) or
// a map cannot be created (its error names the Options field to change);
// then nothing stays loaded.
func Load(ctx context.Context, opts Options) (*Loader, error) {
	return load(ctx, opts, []loadStep{loadBuslockStep, loadCoschedStep, loadSamplerStep})
}

func load(ctx context.Context, opts Options, steps []loadStep) (_ *Loader, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	l := &Loader{
		opts:          opts,
		log:           logr.FromContextOrDiscard(ctx).WithName("kernel"),
		prevLocks:     map[uint32]buslockLockCounts{},
		goneLocks:     map[uint32]uint32{},
		prevPairs:     map[coschedPairKey]coschedPairVal{},
		gonePairs:     map[uint32]bool{},
		vmis:          newVMIRegistry(),
		watched:       map[uint32]uint32{},
		attached:      map[int]*attachment{},
		prevTimelines: map[samplerTimelineKey]timelineMark{},
		baseNs:        monotonicNow(),
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()

	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("kernel: lift RLIMIT_MEMLOCK for eBPF maps (needs CAP_SYS_RESOURCE on kernels before 5.11): %w", err)
	}
	kernelBTF, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("kernel: read the kernel's BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF): %w", err)
	}
	if opts.Topology != nil {
		l.topology = *opts.Topology
	} else if l.topology, err = ReadTopology(opts.SysfsRoot); err != nil {
		return nil, err
	}
	if opts.KVMLayout != nil {
		l.layout = *opts.KVMLayout
	} else {
		l.layout = loadKVMLayout(kernelBTF)
	}

	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("kernel: load: %w", err)
		}
		if err := step(ctx, l, kernelBTF); err != nil {
			return nil, err
		}
	}
	l.status = l.buildStatus()
	for _, s := range l.states {
		if s.loaded {
			l.log.Info("eBPF program attached", "program", s.name, "hook", s.hook, "method", s.method, "note", s.note)
		} else {
			l.log.Info("eBPF program not loaded", "program", s.name, "hook", s.hook, "reason", s.err.Error())
		}
	}
	return l, nil
}

// loadKVMLayout resolves the KVM offsets from vmlinux and whichever of the
// KVM modules are loaded.
func loadKVMLayout(kernelBTF *btf.Spec) KVMLayout {
	specs := []*btf.Spec{kernelBTF}
	for _, mod := range []string{"kvm", "kvm_intel", "kvm_amd"} {
		if s, err := btf.LoadKernelModuleSpec(mod); err == nil {
			specs = append(specs, s)
		}
	}
	return ResolveKVMLayout(specs...)
}

// object is one compiled .bpf.c: its maps, created once and shared by its
// programs, each of which loads on its own so that one missing hook or
// verifier rejection costs only that program.
type object struct {
	name string
	spec *ebpf.CollectionSpec
	maps map[string]*ebpf.Map
}

// newObject sizes the maps, sets the constants and creates the maps.
func (l *Loader) newObject(name string, loadSpec func() (*ebpf.CollectionSpec, error), sizes map[string]int, vars map[string]any) (*object, error) {
	spec, err := loadSpec()
	if err != nil {
		return nil, fmt.Errorf("kernel: %s: %w", name, err)
	}
	for m, n := range sizes {
		ms, ok := spec.Maps[m]
		if !ok {
			return nil, fmt.Errorf("kernel: %s has no map %s", name, m)
		}
		ms.MaxEntries = uint32(n)
	}
	for v, val := range vars {
		vs, ok := spec.Variables[v]
		if !ok {
			return nil, fmt.Errorf("kernel: %s has no variable %s", name, v)
		}
		if err := vs.Set(val); err != nil {
			return nil, fmt.Errorf("kernel: %s: set %s: %w", name, v, err)
		}
	}
	o := &object{name: name, spec: spec, maps: map[string]*ebpf.Map{}}
	for m, ms := range spec.Maps {
		if strings.HasPrefix(m, ".") {
			continue // .rodata and friends are created with each program
		}
		mp, err := ebpf.NewMap(ms)
		if err != nil {
			hint := ""
			if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM) {
				hint = sizeHint(m)
			}
			return nil, fmt.Errorf("kernel: %s: create map %s (max_entries %d): %w%s", name, m, ms.MaxEntries, err, hint)
		}
		l.maps = append(l.maps, mp)
		o.maps[m] = mp
	}
	return o, nil
}

// sizeHint names the Options field that sizes a map.
func sizeHint(m string) string {
	field := map[string]string{
		"lock_counts": "MaxThreads", "threads": "MaxThreads", "pairs": "MaxPairs",
		"ip_bins": "MaxIPBins", "timelines": "MaxTimelines", "samplers": "MaxSamplers",
	}[m]
	if field == "" {
		return ""
	}
	return "; lower Options." + field
}

// program loads one program of the object, sharing the object's maps.
func (l *Loader) program(o *object, name string) (*ebpf.Program, error) {
	spec := o.spec.Copy()
	for p := range spec.Programs {
		if p != name {
			delete(spec.Programs, p)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: maps.Clone(o.maps)})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			l.log.Error(err, "eBPF verifier rejected a program", "program", name, "log", fmt.Sprintf("%+v", ve))
		}
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	defer coll.Close()
	p := coll.DetachProgram(name)
	if p == nil {
		return nil, fmt.Errorf("load %s: not in %s", name, o.name)
	}
	l.programs = append(l.programs, p)
	return p, nil
}

// attachFunction loads and attaches a program on a kernel function: fentry
// first (cheapest), the kprobe variant when fentry cannot load or attach.
func (l *Loader) attachFunction(o *object, st *programState, fentry, kprobe, symbol string, skipFentry bool) *ebpf.Program {
	var fentryErr error
	if !skipFentry {
		p, err := l.program(o, fentry)
		if err == nil {
			lk, aerr := link.AttachTracing(link.TracingOptions{Program: p})
			if aerr == nil {
				l.links = append(l.links, lk)
				st.loaded, st.method = true, "fentry"
				return p
			}
			err = fmt.Errorf("attach: %w", aerr)
		}
		fentryErr = explainHookErr("fentry", err)
	}
	var kprobeErr error
	if !haveKprobes() {
		kprobeErr = errors.New("kprobe: the kernel has no kprobes (no kprobe PMU under /sys/bus/event_source/devices and no tracefs; CONFIG_KPROBES off?)")
	} else if p, err := l.program(o, kprobe); err != nil {
		kprobeErr = explainHookErr("kprobe", err)
	} else if lk, err := link.Kprobe(symbol, p, nil); err != nil {
		kprobeErr = explainHookErr("kprobe", fmt.Errorf("attach: %w", err))
	} else {
		l.links = append(l.links, lk)
		st.loaded, st.method = true, "kprobe"
		if fentryErr != nil {
			st.note = fentryErr.Error()
		}
		return p
	}
	why := []string{}
	if err := probe.Check("function:" + symbol); errors.Is(err, probe.ErrNotSupported) {
		why = append(why, err.Error())
	}
	if fentryErr != nil {
		why = append(why, fentryErr.Error())
	}
	why = append(why, kprobeErr.Error())
	st.err = fmt.Errorf("%w: %s: %s", ErrHookMissing, symbol, strings.Join(why, "; "))
	return nil
}

// explainHookErr shortens the usual reasons a hook cannot be used.
func explainHookErr(method string, err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%s: the kernel refuses it (operation not permitted: kernel lockdown or an LSM)", method)
	}
	return fmt.Errorf("%s: %w", method, err)
}

// haveKprobes reports whether kprobes can be created: through the kprobe
// PMU, or through a mounted tracefs.
func haveKprobes() bool {
	for _, p := range []string{"/sys/bus/event_source/devices/kprobe", "/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

func (l *Loader) newState(name, hook string) *programState {
	st := &programState{name: name, hook: hook}
	l.states = append(l.states, st)
	return st
}

// ProgramErr returns why a program is not loaded (nil when it is). Errors
// wrapping ErrHookMissing mean the kernel lacks or refuses the hook; any
// other error (e.g. a verifier rejection) is a bug to report.
func (l *Loader) ProgramErr(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.states {
		if s.name == name {
			return s.err
		}
	}
	return fmt.Errorf("kernel: no program named %q", name)
}

// Status reports every program and the signals they provide, in the form
// NodeCapabilities wants.
func (l *Loader) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Status{
		Programs: append([]v1alpha1.ProgramStatus(nil), l.status.Programs...),
		Signals:  append([]v1alpha1.SignalStatus(nil), l.status.Signals...),
	}
}

// Topology is the CPU topology the co-scheduling program uses.
func (l *Loader) Topology() Topology { return l.topology }

// KVMLayout is the KVM layout the kvm_exit program uses.
func (l *Loader) KVMLayout() KVMLayout { return l.layout }

func (l *Loader) state(name string) *programState {
	for _, s := range l.states {
		if s.name == name {
			return s
		}
	}
	return &programState{name: name, err: fmt.Errorf("%w: %s was never loaded", ErrNotLoaded, name)}
}

func (l *Loader) buildStatus() Status {
	var s Status
	for _, st := range l.states {
		ps := v1alpha1.ProgramStatus{Name: st.name, Loaded: st.loaded}
		switch {
		case !st.loaded:
			ps.Reason = st.err.Error()
		case st.note != "":
			ps.Reason = "attached with " + st.method + " to " + st.hook + " (" + st.note + ")"
		}
		s.Programs = append(s.Programs, ps)
	}
	signal := func(name, source string, prog string, needs ...string) {
		sig := v1alpha1.SignalStatus{Name: name, Source: source}
		st := l.state(prog)
		var reasons []string
		if !st.loaded {
			reasons = append(reasons, "program "+prog+" not loaded: "+st.err.Error())
		}
		for _, n := range needs {
			if n != "" {
				reasons = append(reasons, n)
			}
		}
		sig.Available = len(reasons) == 0
		sig.Reason = strings.Join(reasons, "; ")
		s.Signals = append(s.Signals, sig)
	}
	probeReason := func(name string) string {
		if err := probe.Check(name); err != nil {
			return err.Error()
		}
		return ""
	}

	layout := ""
	if !l.layout.VMX && !l.layout.SVM {
		layout = "no KVM exit-reason layout: " + strings.Join(l.layout.Missing, "; ")
	}
	signal(SignalBusLocks, "ebpf:kvm_exit", ProgramKVMExit, layout, probeReason(probe.KVMBusLockExit))
	if sig := &s.Signals[len(s.Signals)-1]; sig.Available {
		sig.Reason = "bus-lock VM exits happen only for VMIs whose VMM enabled KVM_CAP_X86_BUS_LOCK_EXIT (LockCounts.BusLockExitEnabled); the PMU's bus-lock event covers the others"
	}
	signal(SignalSplitLocks, "ebpf:handle_guest_split_lock", ProgramSplitLock, probeReason(probe.CPUSplitLockDetect))
	if sig := &s.Signals[len(s.Signals)-1]; sig.Available {
		sig.Reason = "split locks only (a subset of bus locks), and only those KVM handles because the guest does not take #AC itself"
	}
	signal(SignalHostBusLocks, "ebpf:handle_bus_lock", ProgramHostBusLock, probeReason(probe.CPUBusLockDetect))
	cosched := ""
	if len(l.topology.CPUs) == 0 {
		cosched = "no CPU topology"
	}
	signal(SignalCoScheduling, "ebpf:sched_switch", ProgramSchedSwitch, cosched)
	if sig := &s.Signals[len(s.Signals)-1]; sig.Available {
		var notes []string
		if l.topology.LLC == "" {
			notes = append(notes, "sysfs has no cache information: LLC sharing assumed only between SMT siblings")
		}
		if len(l.truncated) > 0 {
			notes = append(notes, fmt.Sprintf("CPUs %v share an LLC with more than %d CPUs: only the first %d are compared", l.truncated, maxPeers, maxPeers))
		}
		sig.Reason = strings.Join(notes, "; ")
	}
	signal(SignalSampleBins, "ebpf:perf_event", ProgramSampler, probeReason(probe.SoftwareSampling))
	return s
}

// ReadStats returns the programs' drop and error counters.
func (l *Loader) ReadStats() (Stats, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Stats{}, ErrClosed
	}
	var s Stats
	var errs []error
	sum := func(m *ebpf.Map, idx uint32, out *uint64) {
		var perCPU []uint64
		if err := m.Lookup(idx, &perCPU); err != nil {
			errs = append(errs, err)
			return
		}
		for _, v := range perCPU {
			*out += v
		}
	}
	sum(l.lockStats, statTableFull, &s.LockTableFull)
	sum(l.lockStats, statReadError, &s.LockReadErrors)
	sum(l.coschedStats, statTableFull, &s.PairTableFull)
	sum(l.samplerStats, statTableFull, &s.IPBinTableFull)
	sum(l.samplerStats, statTimelineFull, &s.TimelineTableFull)
	sum(l.samplerStats, statUnknownEvent, &s.UnknownSampleEvents)
	if err := errors.Join(errs...); err != nil {
		return s, fmt.Errorf("kernel: read stats: %w", err)
	}
	return s, nil
}

// stat_index in include/sidewatch.h.
const (
	statTableFull    = 0
	statReadError    = 1
	statUnknownEvent = 2
	statTimelineFull = 3
)

// Close detaches and unloads everything: sampler links, then the other
// links, then programs, then maps. It returns every error met and is safe
// to call twice.
func (l *Loader) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for fd, a := range l.attached {
		if err := a.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach sampler from perf event fd %d: %w", fd, err))
		}
	}
	for i := len(l.links) - 1; i >= 0; i-- {
		errs = append(errs, l.links[i].Close())
	}
	for _, p := range l.programs {
		errs = append(errs, p.Close())
	}
	for _, m := range l.maps {
		errs = append(errs, m.Close())
	}
	l.attached, l.links, l.programs, l.maps = nil, nil, nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kernel: close: %w", err)
	}
	return nil
}

var _ io.Closer = (*Loader)(nil)

func monotonicNow() uint64 {
	var ts unix.Timespec
	// CLOCK_MONOTONIC is bpf_ktime_get_ns's clock; reading it cannot fail.
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// monotonicToWall maps a CLOCK_MONOTONIC instant to the wall clock.
func monotonicToWall(mono uint64) time.Time {
	now := time.Now()
	return now.Add(-time.Duration(int64(monotonicNow() - mono)))
}
