package kernel

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    []int
		wantErr string
	}{
		{"", nil, ""},
		{"0\n", []int{0}, ""},
		{"0-3", []int{0, 1, 2, 3}, ""},
		{"0,2,4-5", []int{0, 2, 4, 5}, ""},
		// Unsorted and overlapping input comes out sorted and unique.
		{"4-5,0,4", []int{0, 4, 5}, ""},
		{"3-1", nil, "bad range"},
		{"a", nil, "not a CPU number"},
		{"-1", nil, "not a CPU number"},
		{"0-", nil, "bad range"},
		// A huge range is refused instead of allocating billions.
		{"0-4294967295", nil, "bad range"},
		{"9000", nil, "not a CPU number"},
	} {
		got, err := ParseCPUList(c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("ParseCPUList(%q) = %v, %v; want error containing %q", c.in, got, err, c.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ParseCPUList(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
}

func FuzzParseCPUList(f *testing.F) {
	for _, s := range []string{"0-3", "0,2,4-7", "", "1-0", "8191"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseCPUList(s)
		if err != nil {
			return
		}
		if len(got) > maxCPUID || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Fatalf("ParseCPUList(%q) = %v: not sorted, unique and bounded", s, got)
		}
	})
}

// writeSysfs builds a fake /sys from path -> content.
func writeSysfs(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func cpuFiles(files map[string]string, cpu, siblings string, caches ...[3]string) {
	base := "devices/system/cpu/cpu" + cpu + "/"
	files[base+"topology/thread_siblings_list"] = siblings + "\n"
	for i, c := range caches {
		idx := base + "cache/index" + string(rune('0'+i)) + "/"
		files[idx+"level"], files[idx+"type"], files[idx+"shared_cpu_list"] = c[0]+"\n", c[1]+"\n", c[2]+"\n"
	}
}

func TestReadTopology(t *testing.T) {
	// Two cores with two threads each, one L3 for all; L2 per core.
	files := map[string]string{"devices/system/cpu/online": "0-3\n"}
	for _, c := range []struct{ cpu, sib string }{{"0", "0,2"}, {"1", "1,3"}, {"2", "0,2"}, {"3", "1,3"}} {
		cpuFiles(files, c.cpu, c.sib,
			[3]string{"1", "Data", c.sib}, [3]string{"1", "Instruction", c.sib},
			[3]string{"2", "Unified", c.sib}, [3]string{"3", "Unified", "0-3"})
	}
	topo, err := ReadTopology(writeSysfs(t, files))
	if err != nil {
		t.Fatal(err)
	}
	if topo.LLC != "cache/index3 (L3)" {
		t.Errorf("LLC source %q", topo.LLC)
	}
	if len(topo.CPUs) != 4 || !slices.Equal(topo.CPUs[2].Siblings, []int{0, 2}) || !slices.Equal(topo.CPUs[2].LLC, []int{0, 1, 2, 3}) {
		t.Fatalf("topology %+v", topo)
	}
	got := topo.peers(0)
	want := []peer{{2, peerSMT | peerLLC}, {1, peerLLC}, {3, peerLLC}}
	if !slices.Equal(got, want) {
		t.Errorf("peers(0) = %v, want %v", got, want)
	}
	if p := topo.peers(7); p != nil {
		t.Errorf("peers of an unknown CPU: %v", p)
	}
}

func TestReadTopologyWithoutCaches(t *testing.T) {
	// Some VMs expose no cache directories: SMT siblings are still peers
	// (and share their core's caches), other CPUs are not.
	files := map[string]string{"devices/system/cpu/online": "0-1\n"}
	cpuFiles(files, "0", "0-1")
	cpuFiles(files, "1", "0-1")
	topo, err := ReadTopology(writeSysfs(t, files))
	if err != nil {
		t.Fatal(err)
	}
	if topo.LLC != "" {
		t.Errorf("LLC source %q, want none", topo.LLC)
	}
	if got, want := topo.peers(1), []peer{{0, peerSMT | peerLLC}}; !slices.Equal(got, want) {
		t.Errorf("peers(1) = %v, want %v", got, want)
	}
}

func TestReadTopologyErrors(t *testing.T) {
	if _, err := ReadTopology(t.TempDir()); err == nil || !strings.Contains(err.Error(), "online") {
		t.Errorf("no sysfs: %v", err)
	}
	files := map[string]string{"devices/system/cpu/online": "0\n"}
	cpuFiles(files, "0", "zero")
	if _, err := ReadTopology(writeSysfs(t, files)); err == nil || !strings.Contains(err.Error(), "cpu0 thread_siblings_list") {
		t.Errorf("bad siblings list: %v", err)
	}
}

func TestReadTopologyOfThisMachine(t *testing.T) {
	topo, err := ReadTopology("/sys")
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.CPUs) == 0 {
		t.Fatal("no CPUs")
	}
	for _, c := range topo.CPUs {
		if !slices.Contains(c.Siblings, c.ID) || (c.LLC != nil && !slices.Contains(c.LLC, c.ID)) {
			t.Errorf("CPU %d not among its own siblings/LLC: %+v", c.ID, c)
		}
	}
	t.Logf("%+v", topo)
}
