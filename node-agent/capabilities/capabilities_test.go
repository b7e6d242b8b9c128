package capabilities_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/capabilities"
)

const sprCPUInfo = `processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8480+
stepping	: 8
microcode	: 0x2b000590

processor	: 1
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
`

const genoaCPUInfo = `processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC 9654 96-Core Processor
stepping	: 1
microcode	: 0xa101144
`

func TestParseCPUInfo(t *testing.T) {
	c, err := capabilities.ParseCPUInfo([]byte(sprCPUInfo))
	if err != nil {
		t.Fatal(err)
	}
	want := capabilities.CPU{Vendor: "GenuineIntel", Family: 6, Model: 143, Stepping: 8, ModelName: "Intel(R) Xeon(R) Platinum 8480+", Microcode: "0x2b000590"}
	if c != want {
		t.Errorf("got %+v, want %+v", c, want)
	}
	if _, err := capabilities.ParseCPUInfo([]byte("processor : 0\nBogoMIPS : 50\n")); err == nil {
		t.Error("cpuinfo without vendor_id must be an error")
	}
	if _, err := capabilities.ParseCPUInfo([]byte("vendor_id : X\ncpu family : six\n")); err == nil || !strings.Contains(err.Error(), "cpu family") {
		t.Errorf("bad family: %v", err)
	}
}

func TestFamilyFor(t *testing.T) {
	tests := []struct {
		vendor                  string
		family, model, stepping int
		want                    string
	}{
		{"GenuineIntel", 6, 0x55, 4, "skylakex"},
		{"GenuineIntel", 6, 0x55, 7, "cascadelakex"},
		{"GenuineIntel", 6, 0x6a, 6, "icelakex"},
		{"GenuineIntel", 6, 0x8f, 8, "sapphirerapids"},
		{"GenuineIntel", 6, 0xcf, 2, "emeraldrapids"},
		{"GenuineIntel", 6, 0xad, 1, "graniterapids"},
		{"GenuineIntel", 6, 0x9e, 10, "skylake"},
		{"AuthenticAMD", 0x17, 0x31, 0, "amdzen2"},
		{"AuthenticAMD", 0x19, 0x01, 1, "amdzen3"},
		{"AuthenticAMD", 0x19, 0x11, 1, "amdzen4"},
		{"AuthenticAMD", 0x17, 0x01, 1, ""}, // Zen 1: not supported
		{"AuthenticAMD", 0x1a, 0x02, 0, ""}, // Zen 5: not yet
		{"HygonGenuine", 0x18, 0x01, 0, ""},
	}
	for _, tt := range tests {
		got := ""
		if f := capabilities.FamilyFor(tt.vendor, tt.family, tt.model, tt.stepping); f != nil {
			got = f.Name
		}
		if got != tt.want {
			t.Errorf("FamilyFor(%s %d %#x %d) = %q, want %q", tt.vendor, tt.family, tt.model, tt.stepping, got, tt.want)
		}
	}
}

// Every family encodes every sidewatch event, or says why not.
func TestTableComplete(t *testing.T) {
	for _, f := range capabilities.Families {
		if len(f.Sources) == 0 {
			t.Errorf("%s cites no pmu-events source", f.Name)
		}
		var events []v1alpha1.CounterEvent
		for _, e := range f.Events {
			events = append(events, e.Event)
			if e.Missing == "" && (e.EncodingString() == "" || e.PMUEventName == "") {
				t.Errorf("%s %s: encoding %q name %q", f.Name, e.Event, e.EncodingString(), e.PMUEventName)
			}
		}
		for _, want := range v1alpha1.AllCounterEvents {
			if !slices.Contains(events, want) {
				t.Errorf("%s lacks %s", f.Name, want)
			}
		}
	}
	spr := capabilities.FamilyFor("GenuineIntel", 6, 0x8f, 8)
	if e := spr.Events[1]; e.Event != v1alpha1.EventLLCMisses || e.EncodingString() != "raw:0x412e" {
		t.Errorf("SPR llc_misses = %s %s", e.Event, e.EncodingString())
	}
	if e := spr.Events[3]; e.EncodingString() != "raw:0x102c" || e.PMUEventName != "SQ_MISC.BUS_LOCK" {
		t.Errorf("SPR bus_locks = %s %s", e.EncodingString(), e.PMUEventName)
	}
	zen4 := capabilities.FamilyFor("AuthenticAMD", 0x19, 0x11, 1)
	if e := zen4.Events[3]; e.EncodingString() != "raw:0x125" || e.PMUEventName != "ls_locks.bus_lock" {
		t.Errorf("Zen 4 bus_locks = %s %s", e.EncodingString(), e.PMUEventName)
	}
}

func TestParseCapEff(t *testing.T) {
	// CAP_SYS_ADMIN (21), CAP_PERFMON (38), CAP_BPF (39), CAP_CHOWN (0).
	status := "Name:\tagent\nCapInh:\t0000000000000000\nCapEff:\t000000c000200001\n"
	got, err := capabilities.ParseCapEff([]byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_BPF"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := capabilities.ParseCapEff([]byte("Name: x\n")); err == nil {
		t.Error("missing CapEff must be an error")
	}
}

// machine builds a proc root and a sys root.
func machine(t *testing.T, cpuinfo string, pmu bool, paranoid string) (proc, sys string) {
	t.Helper()
	proc, sys = t.TempDir(), t.TempDir()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(proc, "cpuinfo"), []byte(cpuinfo), 0o644))
	must(os.MkdirAll(filepath.Join(proc, "sys/kernel"), 0o755))
	must(os.WriteFile(filepath.Join(proc, "sys/kernel/perf_event_paranoid"), []byte(paranoid+"\n"), 0o644))
	must(os.MkdirAll(filepath.Join(sys, "bus/event_source/devices/software"), 0o755))
	if pmu {
		must(os.MkdirAll(filepath.Join(sys, "bus/event_source/devices/cpu"), 0o755))
	}
	return proc, sys
}

type opener func(typ uint32, config uint64, excludeHost, branchStack bool) error

func TestProbeScenarios(t *testing.T) {
	allWork := opener(func(uint32, uint64, bool, bool) error { return nil })
	noPMU := opener(func(uint32, uint64, bool, bool) error { return syscall.ENOENT })
	guestOwns := opener(func(_ uint32, _ uint64, excludeHost, _ bool) error {
		if excludeHost {
			return syscall.EOPNOTSUPP
		}
		return nil
	})
	denied := opener(func(uint32, uint64, bool, bool) error { return syscall.EACCES })
	noLBR := opener(func(_ uint32, _ uint64, _, branch bool) error {
		if branch {
			return syscall.EOPNOTSUPP
		}
		return nil
	})
	tests := []struct {
		name        string
		cpuinfo     string
		pmu         bool
		open        opener
		ebpf        []v1alpha1.SignalStatus
		monitorable bool
		reason      string
		message     string
		branch      bool
		available   int
	}{
		{name: "Sapphire Rapids with a PMU", cpuinfo: sprCPUInfo, pmu: true, open: allWork, monitorable: true, branch: true, available: 6,
			message: "node n1: monitored with llc_references (pmu), llc_misses (pmu), bus_locks (pmu); not available: split_locks"},
		{name: "Genoa without LBR for guests", cpuinfo: genoaCPUInfo, pmu: true, open: noLBR, monitorable: true, branch: false, available: 6},
		{name: "no hardware counters (this development machine)", cpuinfo: genoaCPUInfo, pmu: false, open: noPMU,
			monitorable: false, reason: v1alpha1.ReasonNoHardwareCounters, message: "node n1: no hardware counters"},
		{name: "KVM gives the PMU to guests", cpuinfo: sprCPUInfo, pmu: true, open: guestOwns,
			monitorable: false, reason: v1alpha1.ReasonPMUOwnedByGuest},
		{name: "perf_event_paranoid without CAP_PERFMON", cpuinfo: sprCPUInfo, pmu: true, open: denied,
			monitorable: false, reason: v1alpha1.ReasonInsufficientPrivileges},
		{name: "no PMU but bus locks from eBPF: reduced signals", cpuinfo: genoaCPUInfo, pmu: false, open: noPMU,
			ebpf:        []v1alpha1.SignalStatus{{Name: "bus_locks", Available: true, Source: "ebpf:kvm_exit"}, {Name: "cosched", Available: true, Source: "ebpf:sched_switch"}},
			monitorable: true, message: "node n1: monitored with bus_locks (ebpf:kvm_exit); not available: llc_references, llc_misses, split_locks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc, sys := machine(t, tt.cpuinfo, tt.pmu, "2")
			opts := capabilities.WithOpener(capabilities.Options{Node: "n1", ProcRoot: proc, SysRoot: sys, EBPFSignals: tt.ebpf}, tt.open)
			caps, err := capabilities.Probe(opts)
			if err != nil {
				t.Fatal(err)
			}
			if caps.Monitorable != tt.monitorable || caps.Reason != tt.reason {
				t.Fatalf("monitorable=%v reason=%q message=%q, want %v %q", caps.Monitorable, caps.Reason, caps.Message, tt.monitorable, tt.reason)
			}
			if tt.message != "" && caps.Message != tt.message {
				t.Errorf("message %q, want %q", caps.Message, tt.message)
			}
			if caps.PMU.BranchStack != tt.branch {
				t.Errorf("branch stack %v, want %v", caps.PMU.BranchStack, tt.branch)
			}
			n := 0
			for _, e := range caps.PMU.Events {
				if e.Available {
					n++
				} else if e.Reason == "" {
					t.Errorf("%s unavailable without a reason", e.Event)
				}
			}
			if n != tt.available {
				t.Errorf("%d events available, want %d: %+v", n, tt.available, caps.PMU.Events)
			}
			if caps.PerfEventParanoid != 2 || caps.FileDescriptors.Limit == 0 || caps.FileDescriptors.Open == 0 {
				t.Errorf("paranoid %d fds %+v", caps.PerfEventParanoid, caps.FileDescriptors)
			}
		})
	}
}

func TestEventsFor(t *testing.T) {
	proc, sys := machine(t, sprCPUInfo, true, "2")
	caps, err := capabilities.Probe(capabilities.WithOpener(capabilities.Options{Node: "n1", ProcRoot: proc, SysRoot: sys},
		func(uint32, uint64, bool, bool) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	evs, skipped := capabilities.EventsFor(caps, v1alpha1.AllCounterEvents, []v1alpha1.CounterEvent{v1alpha1.EventLLCMisses, v1alpha1.EventBusLocks})
	var names []string
	for _, e := range evs {
		names = append(names, e.Name)
		if e.Sample != (e.Name == "llc_misses" || e.Name == "bus_locks") {
			t.Errorf("%s sampled=%v", e.Name, e.Sample)
		}
	}
	if want := []string{"llc_references", "llc_misses", "l1d_misses", "bus_locks", "instructions", "cycles"}; !slices.Equal(names, want) {
		t.Errorf("events %v, want %v", names, want)
	}
	if len(skipped) != 1 || !strings.HasPrefix(skipped[0], "split_locks: counted inside bus_locks") {
		t.Errorf("skipped %v", skipped)
	}
}

// On this machine, for real.
func TestProbeThisMachine(t *testing.T) {
	caps, err := capabilities.Probe(capabilities.Options{Node: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("monitorable=%v reason=%s message=%q pmu=%+v", caps.Monitorable, caps.Reason, caps.Message, caps.PMU)
	if _, err := os.Stat("/sys/bus/event_source/devices/cpu"); err == nil {
		t.Skip("this machine has a CPU PMU; the no-hardware checks below apply to machines without one")
	}
	if caps.Monitorable || caps.Reason != v1alpha1.ReasonNoHardwareCounters || caps.Message != "node dev: no hardware counters" {
		t.Errorf("without a PMU: monitorable=%v reason=%q message=%q", caps.Monitorable, caps.Reason, caps.Message)
	}
	if caps.PMU.Present || caps.PMU.Vendor == "" || !strings.Contains(caps.PMU.Reason, "ENOENT") {
		t.Errorf("pmu %+v", caps.PMU)
	}
	if !slices.Contains(caps.Capabilities, "CAP_PERFMON") && os.Geteuid() == 0 {
		t.Errorf("root without CAP_PERFMON? %v", caps.Capabilities)
	}
}

func TestWithKernel(t *testing.T) {
	proc, sys := machine(t, genoaCPUInfo, false, "2")
	caps, err := capabilities.Probe(capabilities.WithOpener(capabilities.Options{Node: "n1", ProcRoot: proc, SysRoot: sys},
		func(uint32, uint64, bool, bool) error { return syscall.ENOENT }))
	if err != nil {
		t.Fatal(err)
	}
	programs := []v1alpha1.ProgramStatus{{Name: "kvm_exit", Loaded: true}, {Name: "split_lock", Reason: "hook missing"}}
	signals := []v1alpha1.SignalStatus{
		{Name: "bus_locks", Source: "ebpf:kvm_exit", Reason: "no KVM_CAP_X86_BUS_LOCK_EXIT"},
		{Name: "split_locks", Available: true, Source: "ebpf:handle_guest_split_lock"},
		{Name: "cosched", Available: true, Source: "ebpf:sched_switch"},
	}
	// No bus-lock signal anywhere, but split locks from eBPF: monitorable
	// with reduced signals, and the message says what is missing.
	bus := v1alpha1.SignalStatus{Name: "bus_locks", Reason: "no bus-lock exits; no hardware counters"}
	got := capabilities.WithKernel(caps, programs, signals, &bus)
	if !got.Monitorable || got.Reason != "" || !strings.Contains(got.Message, "split_locks (ebpf:handle_guest_split_lock)") || len(got.EBPF) != 2 {
		t.Errorf("with split locks: %v %q %q", got.Monitorable, got.Reason, got.Message)
	}
	byName := map[string]v1alpha1.SignalStatus{}
	for _, s := range got.Signals {
		byName[s.Name] = s
	}
	if byName["bus_locks"].Available || byName["cosched"].Source != "ebpf:sched_switch" || byName["llc_misses"].Source != "pmu" {
		t.Errorf("signals %+v", got.Signals)
	}
	// Nothing usable from eBPF either (this machine): still no hardware counters.
	signals[1].Available = false
	got = capabilities.WithKernel(caps, programs, signals, &bus)
	if got.Monitorable || got.Reason != v1alpha1.ReasonNoHardwareCounters || got.Message != "node n1: no hardware counters" {
		t.Errorf("without: %v %q %q", got.Monitorable, got.Reason, got.Message)
	}
}
