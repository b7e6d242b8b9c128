package introspect

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/internal/guest"
)

// The integration tests boot the test guest (hack/guest) under QEMU, as
// KubeVirt's virt-launcher runs it, introspect it from outside and compare
// with the ground truth the guest printed about itself.

type guestCase struct {
	name    string
	flavour string
	boot    guest.Boot
	memMiB  int
	viaPID  bool // read RAM through /proc/<qemu>/mem instead of the file
}

var guestCases = []guestCase{
	// Debian's generic kernel, direct PVH boot: no KASLR.
	{name: "amd64-pvh-nokaslr", flavour: "amd64", boot: guest.BootPVH},
	// The same kernel through its decompressor: KASLR on; 3 GiB of RAM so
	// that q35 maps part of it above 4 GiB; RAM read via /proc/<pid>/mem.
	{name: "amd64-bzimage-kaslr-3g-procmem", flavour: "amd64", boot: guest.BootBzImage, memMiB: 3072, viaPID: true},
	// A second kernel build (Debian's cloud flavour: other config, other
	// structure layouts), KASLR on.
	{name: "cloud-amd64-bzimage-kaslr", flavour: "cloud-amd64", boot: guest.BootBzImage},
	// PREEMPT_RT reshapes task_struct and friends.
	{name: "rt-amd64-pvh", flavour: "rt-amd64", boot: guest.BootPVH},
}

func TestGuests(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU guests")
	}
	cache := &KernelCache{}
	for _, tc := range guestCases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			g, err := guest.Start(ctx, guest.Config{Namespace: "intro", Name: tc.name, Flavour: tc.flavour, Boot: tc.boot, MemoryMiB: tc.memMiB})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Stop()
			src := Source{QMPSocket: g.QMPSocket, MemoryFile: g.MemoryFile}
			if tc.viaPID {
				src.MemoryFile, src.PID = "", g.PID
			}
			gi, err := Open(ctx, src, Options{Cache: cache})
			if err != nil {
				t.Fatal(err)
			}
			defer gi.Close()
			checkGuest(ctx, t, g, gi)
			if tc.memMiB > 4096-1024 {
				checkAbove4G(t, gi)
			}
		})
	}
}

// TestTornReads introspects a guest that starts and reaps processes all the
// time: walks meet tasks and memory maps as they change. Every refresh must
// end (with partial results at worst) and keep the long-lived processes.
func TestTornReads(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a QEMU guest")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	g, err := guest.Start(ctx, guest.Config{Namespace: "intro", Name: "churn", Role: "churn"})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	gi, err := Open(ctx, Source{QMPSocket: g.QMPSocket, MemoryFile: g.MemoryFile}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer gi.Close()
	partial := 0
	comms := map[string]bool{}
	for i := 0; i < 200; i++ {
		if err := gi.Refresh(ctx); err != nil {
			partial++
		}
		procs, _ := gi.Processes(ctx)
		found := false
		for _, p := range procs {
			found = found || p.PID == g.Truth.VictimPID
			comms[p.Comm] = true
		}
		if !found {
			t.Fatalf("refresh %d lost the victim", i)
		}
		if _, err := gi.Maps(ctx, g.Truth.VictimPID); err != nil {
			t.Fatalf("refresh %d: victim maps: %v", i, err)
		}
	}
	st := gi.Stats()
	t.Logf("200 refreshes: %d partial, last error %q; short-lived processes seen: %v", partial, st.LastError, comms["true"] || comms["busybox"] || comms["sh"])
}

func checkGuest(ctx context.Context, t *testing.T, g *guest.Guest, gi *Guest) {
	truth := g.Truth
	info := gi.Kernel()
	t.Logf("kernel %q text %#x levels %d BTF %d bytes, %d text symbols (%s, %s)", info.Banner, info.Text, info.PagingLevels, info.BTFSize, info.TextSymbols, info.SymbolSource, info.KallsymsLayout)
	if !strings.Contains(info.Banner, truth.Kernel) {
		t.Errorf("banner %q does not name kernel %s", info.Banner, truth.Kernel)
	}
	if want := truth.KernelSymbols["_stext"]; info.Text != want {
		t.Errorf("kernel text at %#x, guest's kallsyms says _stext %#x", info.Text, want)
	}
	if want := truth.KernelSymbols["__start_BTF"]; info.BTFAddress != want {
		t.Errorf("BTF found at %#x, guest's kallsyms says __start_BTF %#x", info.BTFAddress, want)
	}

	// Processes: every process the guest listed, with its parent and name.
	procs, err := gi.Processes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]Process{}
	for _, p := range procs {
		got[p.PID] = p
	}
	missing := 0
	for pid, want := range truth.Processes {
		p, ok := got[pid]
		switch {
		case !ok && strings.HasPrefix(want.Comm, "kworker"):
			// Kernel workers come and go.
		case !ok:
			missing++
			t.Errorf("pid %d (%s) missing from the process list", pid, want.Comm)
		case p.PPID != want.PPID || !sameComm(p, want.Comm):
			t.Errorf("pid %d: got ppid %d comm %q, want ppid %d comm %q", pid, p.PPID, p.Comm, want.PPID, want.Comm)
		}
	}
	t.Logf("%d processes listed, %d in ground truth", len(procs), len(truth.Processes))

	// The victim's memory map, line for line.
	maps, err := gi.Maps(ctx, truth.VictimPID)
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) != len(truth.VictimMaps) {
		t.Errorf("victim has %d memory areas, want %d:\n%s", len(maps), len(truth.VictimMaps), formatMaps(maps))
	}
	for i := 0; i < len(maps) && i < len(truth.VictimMaps); i++ {
		w := truth.VictimMaps[i]
		if m := maps[i]; m.Start != w.Start || m.End != w.End || m.Perms != w.Perms || m.Offset != w.Offset || m.Path != w.Path {
			t.Errorf("victim map line %d: got %x-%x %s %08x %s, want %x-%x %s %08x %s", i, m.Start, m.End, m.Perms, m.Offset, m.Path, w.Start, w.End, w.Perms, w.Offset, w.Path)
		}
	}

	// An address inside victim_modexp resolves to the library, the offset
	// and the function, by pid and through the vCPU running the victim.
	addr, fileOff := victimModexp(t, g)
	const into = 5
	a, err := gi.Resolve(ctx, Query{Address: addr + into, VCPU: -1, PID: truth.VictimPID})
	if err != nil {
		t.Fatal(err)
	}
	checkVictimAttribution(t, a, truth.VictimPID, fileOff+into, into)

	// vCPU threads, as perf names them, map to vCPU indexes.
	threads, err := gi.VCPUThreads(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names, err := g.VCPUThreads()
	if err != nil {
		t.Fatal(err)
	}
	for tid, name := range names {
		if idx, ok := threads[tid]; !ok || name != fmt.Sprintf("CPU %d/TCG", idx) {
			t.Errorf("thread %d (%s): vCPU index %d, %v", tid, name, idx, ok)
		}
	}

	found := false
	for try := 0; try < 50 && !found; try++ {
		vcpus, err := gi.VCPUs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vcpus {
			if v.PID != truth.VictimPID {
				continue
			}
			a, err := gi.Resolve(ctx, Query{Address: addr + into, VCPU: v.Index, At: v.At})
			if err != nil {
				t.Fatal(err)
			}
			if a.Via != "vcpu-history" {
				t.Errorf("resolution via %q, want the vCPU observation", a.Via)
			}
			checkVictimAttribution(t, a, truth.VictimPID, fileOff+into, into)
			found = true
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !found {
		t.Errorf("the busy victim (pid %d) was never seen running on a vCPU", truth.VictimPID)
	}

	// Kernel addresses resolve to the guest's own kernel symbols.
	for _, name := range []string{"schedule", "do_syscall_64"} {
		want := truth.KernelSymbols[name]
		if want == 0 {
			t.Fatalf("ground truth lacks %s", name)
		}
		a, err := gi.Resolve(ctx, Query{Address: want + 3, VCPU: 0})
		if err != nil {
			t.Fatal(err)
		}
		if !a.Kernel || a.Symbol != name || a.SymbolOffset != 3 {
			t.Errorf("%#x resolved to %+v, want %s+0x3", want+3, a, name)
		}
	}
	// A module's function resolves through the module list and the
	// module's own symbol table.
	if want := truth.KernelSymbols["dummy_get_stats64"]; want == 0 {
		t.Error("ground truth lacks the dummy module's dummy_get_stats64")
	} else {
		a, err := gi.Resolve(ctx, Query{Address: want + 2, VCPU: -1})
		if err != nil {
			t.Fatal(err)
		}
		if !a.Kernel || a.Path != "[dummy]" || a.Symbol != "dummy_get_stats64" || a.SymbolOffset != 2 {
			t.Errorf("module address %#x resolved to %+v, want [dummy] dummy_get_stats64+0x2", want+2, a)
		}
	}

	// Reads race with the running guest: refresh again and again; every
	// pass must find the victim and its library, whatever else tears.
	for i := 0; i < 20; i++ {
		if err := gi.Refresh(ctx); err != nil {
			t.Logf("refresh %d: partial: %v", i, err)
		}
		if _, err := gi.Maps(ctx, truth.VictimPID); err != nil {
			t.Errorf("refresh %d: victim maps: %v", i, err)
		}
	}
	st := gi.Stats()
	t.Logf("stats: %+v", st)
	if st.MemoryBytes <= 0 || st.SharedKernelBytes <= 0 {
		t.Errorf("stats report no memory: %+v", st)
	}
}

// sameComm compares task->comm with what /proc/<pid>/stat showed: for
// kernel threads /proc prints the full thread name or the workqueue a
// kworker serves, of which comm is the first 15 bytes.
func sameComm(p Process, proc string) bool {
	if p.Comm == proc {
		return true
	}
	return p.Kernel && len(p.Comm) > 0 && strings.HasPrefix(proc, p.Comm)
}

func checkVictimAttribution(t *testing.T, a Attribution, pid int, off, symOff uint64) {
	t.Helper()
	if a.PID != pid || a.Comm != "victim" || a.Path != "/lib/libvictim.so" || a.Offset != off || a.Symbol != "victim_modexp" || a.SymbolOffset != symOff {
		t.Errorf("got %+v, want pid %d victim /lib/libvictim.so offset %#x victim_modexp+%#x", a, pid, off, symOff)
	}
}

// victimModexp computes where victim_modexp is in the victim from the built
// library and the victim's maps the guest printed.
func victimModexp(t *testing.T, g *guest.Guest) (addr, fileOff uint64) {
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
	var value uint64
	for _, s := range syms {
		if s.Name == "victim_modexp" {
			value = s.Value
		}
	}
	if value == 0 {
		t.Fatal("libvictim.so has no victim_modexp")
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && value >= p.Vaddr && value < p.Vaddr+p.Filesz {
			fileOff = value - p.Vaddr + p.Off
		}
	}
	for _, m := range g.Truth.VictimMaps {
		if strings.HasSuffix(m.Path, "/libvictim.so") && fileOff >= m.Offset && fileOff < m.Offset+(m.End-m.Start) {
			return m.Start + fileOff - m.Offset, fileOff
		}
	}
	t.Fatalf("no mapping of libvictim.so holds file offset %#x", fileOff)
	return 0, 0
}

// checkAbove4G checks that the guest's RAM above 4 GiB was used and read.
func checkAbove4G(t *testing.T, gi *Guest) {
	gi.mu.Lock()
	defer gi.mu.Unlock()
	l := gi.mem.layout
	if len(l) != 2 || l[1].GPA != 4*gib {
		t.Fatalf("layout %+v: want RAM split around the PCI hole", l)
	}
	// Kernel page tables and most process memory sit high: the walks above
	// succeeded, so at least the kernel's root table came from above 4 GiB.
	above := 0
	for _, r := range gi.regs {
		if r.CR3&addrM >= 4*gib {
			above++
		}
	}
	t.Logf("layout %+v; %d of %d vCPU page-table roots above 4 GiB", l, above, len(gi.regs))
}

func formatMaps(maps []Mapping) string {
	var sb strings.Builder
	for _, m := range maps {
		fmt.Fprintf(&sb, "%x-%x %s %08x %s\n", m.Start, m.End, m.Perms, m.Offset, m.Path)
	}
	return sb.String()
}

var _ = errors.Is
var _ = os.Getenv
