package kernel

import (
	"strings"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
)

func TestOptionsDefaults(t *testing.T) {
	got, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if got.MaxThreads != 4096 || got.MaxPairs != 65536 || got.IPBinBytes != 64 || got.SampleSlot != 4*time.Millisecond || got.SysfsRoot != "/sys" {
		t.Errorf("defaults: %+v", got)
	}
	_, err = Options{MaxThreads: -1, MaxSamplers: 1 << 25, IPBinBytes: 3}.withDefaults()
	for _, want := range []string{"Options.MaxThreads = -1", "Options.MaxSamplers = 33554432", "Options.IPBinBytes = 3"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not contain %q", err, want)
		}
	}
}

func TestBusLockSignal(t *testing.T) {
	status := func(exits, split bool) Status {
		return Status{Signals: []v1alpha1.SignalStatus{
			{Name: SignalBusLocks, Available: exits, Source: "ebpf:kvm_exit", Reason: map[bool]string{false: "no KVM_CAP_X86_BUS_LOCK_EXIT"}[exits]},
			{Name: SignalSplitLocks, Available: split, Source: "ebpf:handle_guest_split_lock", Reason: map[bool]string{false: "no split_lock_detect"}[split]},
		}}
	}
	for _, c := range []struct {
		name          string
		exits, split  bool
		pmu           bool
		wantAvailable bool
		wantSource    string
		wantReason    string
	}{
		{"exits and pmu", true, false, true, true, "ebpf:kvm_exit,pmu", "PMU's bus-lock event for the others"},
		{"exits only", true, false, false, true, "ebpf:kvm_exit", "only VMIs whose VMM enabled"},
		{"pmu only", false, true, true, true, "pmu", ""},
		{"split locks only", false, true, false, true, "ebpf:handle_guest_split_lock", "split locks only"},
		{"nothing", false, false, false, false, "", "no KVM_CAP_X86_BUS_LOCK_EXIT"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := BusLockSignal(status(c.exits, c.split), c.pmu, "node n1: no hardware counters")
			if got.Name != SignalBusLocks || got.Available != c.wantAvailable || got.Source != c.wantSource || !strings.Contains(got.Reason, c.wantReason) {
				t.Errorf("got %+v, want available=%v source=%q reason containing %q", got, c.wantAvailable, c.wantSource, c.wantReason)
			}
			if !got.Available && !strings.Contains(got.Reason, "no hardware counters") {
				t.Errorf("unavailable without the PMU's reason: %q", got.Reason)
			}
		})
	}
}

func TestVMIRegistry(t *testing.T) {
	r := newVMIRegistry()
	a, _ := r.id("ns/a")
	b, _ := r.id("ns/b")
	if a2, _ := r.id("ns/a"); a2 != a || a == b || a == 0 {
		t.Fatalf("ids a=%d a2=%d b=%d", a, a2, b)
	}
	r.prune(map[uint32]bool{b: true})
	if r.name(a) != "" || r.name(b) != "ns/b" {
		t.Fatalf("after prune: a=%q b=%q", r.name(a), r.name(b))
	}
	// A pruned name gets a new number, never an old one.
	if a3, _ := r.id("ns/a"); a3 == a || a3 == b {
		t.Fatalf("reused number %d", a3)
	}
}
