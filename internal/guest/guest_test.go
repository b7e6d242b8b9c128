package guest

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestBootPVH(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g, err := Start(ctx, Config{Namespace: "tenant-a", Name: "vm1", Role: "attacker"})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop()

	if g.Truth.Role != "attacker" {
		t.Errorf("role = %q, want attacker", g.Truth.Role)
	}
	if p, ok := g.Truth.Processes[g.Truth.VictimPID]; !ok || p.Comm != "victim" {
		t.Errorf("victim pid %d: got %+v, want comm victim", g.Truth.VictimPID, p)
	}
	lib := false
	for _, m := range g.Truth.VictimMaps {
		if strings.HasSuffix(m.Path, "/libvictim.so") && strings.Contains(m.Perms, "x") {
			lib = true
		}
	}
	if !lib {
		t.Errorf("victim maps lack an executable libvictim.so mapping: %+v", g.Truth.VictimMaps)
	}
	threads, err := g.VCPUThreads()
	if err != nil {
		t.Fatal(err)
	}
	if len(threads) != 2 {
		t.Errorf("vCPU threads = %v, want 2 named CPU n/TCG", threads)
	}
	for _, name := range []string{"_stext", "init_task", "__start_BTF"} {
		if g.Truth.KernelSymbols[name] == 0 {
			t.Errorf("ground truth lacks kernel symbol %s", name)
		}
	}
	cmdline, _ := readFile("/proc/" + itoa(g.PID) + "/cmdline")
	if !strings.Contains(strings.ReplaceAll(cmdline, "\x00", " "), "guest=tenant-a_vm1,debug-threads=on") {
		t.Errorf("qemu command line lacks libvirt-style -name: %q", cmdline)
	}
}

func TestParseGroundTruthRejectsIncomplete(t *testing.T) {
	if _, err := parseGroundTruth("SIDEWATCH-GROUND-TRUTH-BEGIN\nrole idle\nSIDEWATCH-GROUND-TRUTH-END\n"); err == nil {
		t.Fatal("got nil error for ground truth without pids")
	}
	if _, err := parseGroundTruth("nothing here"); err == nil {
		t.Fatal("got nil error for a console without markers")
	}
}

// The kernel's link-time base; KASLR moves _stext away from it.
const linkTimeText = 0xffffffff81000000

func TestBootBzImageKASLR(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g, err := Start(ctx, Config{Namespace: "tenant-b", Name: "vm2", Boot: BootBzImage})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	if got := g.Truth.KernelSymbols["_stext"]; got == linkTimeText || got == 0 {
		t.Errorf("_stext = %#x: KASLR did not move the kernel", got)
	}
}
