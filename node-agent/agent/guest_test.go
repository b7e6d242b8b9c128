//go:build linux

package agent_test

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/guest"
	"github.com/sidewatch/sidewatch/node-agent/agent"
	"github.com/sidewatch/sidewatch/node-agent/collect/perf"
	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

// moveToPodCgroup puts a process in a kubepods-style cgroup (cgroupfs
// driver) of pod uid, as kubelet runs virt-launcher, so discovery reads a
// pod UID from the real /proc/<pid>/cgroup. It returns a cleanup, or an
// error on machines where the test cannot create cgroups.
func moveToPodCgroup(pid int, uid string) (func(), error) {
	for _, root := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			continue
		}
		dir := filepath.Join(root, "kubepods", "besteffort", "pod"+uid, "sidewatch-test-ctr")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			_ = os.Remove(dir)
			continue
		}
		return func() {
			_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
			for d := dir; d != root; d = filepath.Dir(d) {
				_ = os.Remove(d)
			}
		}, nil
	}
	return nil, fmt.Errorf("no writable cgroup hierarchy")
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Two real QEMU guests (TCG here, KVM in production), found from the real
// /proc and watched through the real perf collector with software events
// on their real vCPU threads, through the whole agent loop; one guest then
// stops and every descriptor of its threads is closed.
func TestRealGuestsThroughTheLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("boots two QEMU guests")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var victim, spy *guest.Guest
	var errV, errS error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		victim, errV = guest.Start(ctx, guest.Config{Namespace: "tenant-a", Name: "victim", Role: "busy"})
	}()
	go func() {
		defer wg.Done()
		spy, errS = guest.Start(ctx, guest.Config{Namespace: "tenant-b", Name: "spy", Role: "attacker"})
	}()
	wg.Wait()
	if victim != nil {
		defer victim.Stop()
	}
	if spy != nil {
		defer spy.Stop()
	}
	if errV != nil || errS != nil {
		t.Fatalf("booting guests: %v / %v", errV, errS)
	}

	const spyPod = "5b3c9f7e-1d2a-4c4b-9e8f-0a1b2c3d4e5f"
	if cleanup, err := moveToPodCgroup(spy.PID, spyPod); err != nil {
		t.Logf("not testing pod UIDs from real cgroups: %v", err)
	} else {
		defer cleanup()
	}

	// Discovery from the real /proc: the vCPU threads QEMU names.
	procs, err := discovery.Scanner{ProcRoot: "/proc"}.Scan()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]discovery.Process{}
	for _, p := range procs {
		byName[p.VMI.String()] = p
	}
	for _, g := range []*guest.Guest{victim, spy} {
		p, ok := byName[g.Config.Namespace+"/"+g.Config.Name]
		if !ok || p.PID != g.PID || p.Accelerator != "TCG" {
			t.Fatalf("guest %s/%s (pid %d) not found as a QEMU process: %+v", g.Config.Namespace, g.Config.Name, g.PID, p)
		}
		want, err := g.VCPUThreads()
		if err != nil {
			t.Fatal(err)
		}
		if len(p.VCPUs) != 2 || len(want) != 2 {
			t.Fatalf("%s: vCPUs %+v, QEMU's own list %v", p.VMI, p.VCPUs, want)
		}
		for _, v := range p.VCPUs {
			if want[v.TID] != fmt.Sprintf("CPU %d/TCG", v.Index) {
				t.Errorf("%s: vCPU %d tid %d is %q", p.VMI, v.Index, v.TID, want[v.TID])
			}
		}
	}
	if p := byName["tenant-b/spy"]; p.PodUID != "" && p.PodUID != spyPod {
		t.Errorf("spy pod uid %q, want %q", p.PodUID, spyPod)
	}

	before := openFDs(t)
	// task_clock counts nanoseconds: one sample per ms of vCPU time.
	a, det := softwareAgent(t, perf.New(testr.New(t)),
		discovery.VMI{Ref: discovery.VMIRef{Namespace: "tenant-a", Name: "victim"}, UID: types.UID("u-victim"), Labels: map[string]string{"protect": "yes"}},
		discovery.VMI{Ref: discovery.VMIRef{Namespace: "tenant-b", Name: "spy"}, UID: types.UID("u-spy"), PodUIDs: []string{spyPod}},
	)
	runCtx, stopAgent := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	time.Sleep(2 * time.Second)

	st := a.Stats()
	if st.VMIs != 2 || st.VCPUs != 4 || st.PerfFDs != 16 || st.PerfGroups != 4 {
		t.Fatalf("stats %+v, want 2 VMIs, 4 vCPUs, 4 groups of 4 events", st)
	}
	det.mu.Lock()
	for _, vm := range []string{"victim", "spy"} {
		var cpu uint64
		var samples int
		for s, sums := range det.sums {
			if s.VMI == vm {
				cpu += sums["task_clock"]
				samples += det.samples[s]
			}
		}
		// TCG vCPUs of a guest running a busy loop or a spy use CPU.
		if cpu < uint64(50*time.Millisecond) || samples == 0 {
			t.Errorf("%s: task_clock %v, %d samples in 2 s", vm, time.Duration(cpu), samples)
		}
	}
	if !det.ordered {
		t.Error("observations of a stream went back in time")
	}
	det.mu.Unlock()

	// Attribution through guest introspection (QMP socket from QEMU's
	// command line, memory through /proc/<pid>/mem): the victim's
	// victim_modexp, seen from the vCPU that runs it, and a kernel address.
	in := agent.NewIntrospector(testr.New(t), "/proc")
	defer in.Close()
	victimRef := report.VMIRef{Namespace: "tenant-a", Name: "victim"}
	in.SetVMI(victimRef, victim.PID)
	addr := victimModexp(t, victim) + 5
	found := false
	for vcpu := 0; vcpu < 2 && !found; vcpu++ {
		progs, err := in.Attribute(ctx, victimRef, victim.PID, []agent.AddrCount{{Addr: addr, Samples: 3, VCPU: vcpu}})
		if err != nil {
			t.Fatalf("Attribute: %v", err)
		}
		for _, p := range progs {
			if p.Path == "/lib/libvictim.so" && p.Symbol == "victim_modexp" && p.Comm == "victim" && p.Samples == 3 {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("victim_modexp+5 at %#x not attributed to the victim's libvictim.so from either vCPU", addr)
	}
	stext := victim.Truth.KernelSymbols["_stext"]
	if r, ok := in.Resolve(detect.VMIRef{Namespace: "tenant-a", Name: "victim"}, stext+0x100); !ok || r.Path != "[kernel]" || r.Start > stext+0x100 || r.End <= stext+0x100 {
		t.Errorf("Resolve(_stext+0x100) = %+v, %v", r, ok)
	}

	// The spy's QEMU stops (VMI deleted, or migrated away): its vCPU
	// threads vanish and their descriptors are closed.
	if err := spy.Stop(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st = a.Stats()
		if st.VCPUs == 2 && st.PerfFDs == 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the spy stopped: %+v, want 2 vCPUs and 8 perf fds", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopAgent()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if after := openFDs(t); after > before {
		t.Errorf("descriptors: %d after the agent stopped, %d before it started", after, before)
	}
}

// softwareAgent is an agent on the real /proc whose collector counts the
// software events (task_clock sampled once per ms of vCPU time) on the
// vCPU threads of vmis, those labelled protect=yes protected, and hands
// everything to the returned recording detector.
func softwareAgent(t *testing.T, col *perf.Collector, vmis ...discovery.VMI) (*agent.Agent, *recordingDetector) {
	t.Helper()
	msPeriod := func(s *v1alpha1.SideChannelPolicySpec) { s.Collection.SamplePeriod = 1_000_000 }
	world := newWorld([]v1alpha1.SideChannelPolicy{policy("protect", 0, nil, sel("protect", "yes"), msPeriod)}, vmis...)
	evs := perf.Software()
	evs[0].Sample = true
	det := newRecordingDetector()
	a, err := agent.New(agent.Options{
		Node: "n1", Log: testr.New(t), World: world, ProcRoot: "/proc", Collector: col,
		Capabilities:   v1alpha1.NodeCapabilities{Node: "n1"},
		Events:         evs,
		Detectors:      func(string, *v1alpha1.SideChannelPolicy) (agent.Detector, error) { return det, nil },
		RescanInterval: 200 * time.Millisecond, DrainInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, det
}

// victimModexp is where victim_modexp is in the guest's victim process, from
// the built library's symbols and the maps the guest printed.
func victimModexp(t *testing.T, g *guest.Guest) uint64 {
	t.Helper()
	f, err := elf.Open(g.Artifacts.LibVictim)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	var value, fileOff uint64
	for _, s := range syms {
		if s.Name == "victim_modexp" {
			value = s.Value
		}
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && value >= p.Vaddr && value < p.Vaddr+p.Filesz {
			fileOff = value - p.Vaddr + p.Off
		}
	}
	for _, m := range g.Truth.VictimMaps {
		if strings.HasSuffix(m.Path, "/libvictim.so") && fileOff >= m.Offset && fileOff < m.Offset+(m.End-m.Start) {
			return m.Start + fileOff - m.Offset
		}
	}
	t.Fatalf("no mapping of libvictim.so holds victim_modexp (file offset %#x)", fileOff)
	return 0
}
