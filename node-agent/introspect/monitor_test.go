package introspect

import (
	"os"
	"strings"
	"testing"
)

func TestParseRegisters(t *testing.T) {
	b, err := os.ReadFile("testdata/info-registers.txt")
	if err != nil {
		t.Fatal(err)
	}
	regs, err := parseRegisters(string(b))
	if err != nil {
		t.Fatal(err)
	}
	want := []VCPURegisters{
		{Index: 0, RIP: 0xffffffffb28592eb, CPL: 0, Halted: true, CR3: 0x1009c2000, CR4: 0x751ef0, EFER: 0xd01, GSBase: 0xff12588fbca00000, IDTBase: 0xfffffe0000000000},
	}
	if len(regs) != 2 {
		t.Fatalf("got %d vCPUs, want 2", len(regs))
	}
	if regs[0].RIP != want[0].RIP || regs[0].GSBase != want[0].GSBase || regs[0].CR4 != want[0].CR4 || regs[0].EFER != want[0].EFER || !regs[0].Halted || regs[0].IDTBase != want[0].IDTBase {
		t.Errorf("vCPU 0: got %+v", regs[0])
	}
	if pagingLevels(regs) != 5 {
		t.Errorf("CR4.LA57 set: want 5-level paging")
	}
	// A vCPU not yet started (real mode, no CR3) does not spoil the rest.
	if regs, err := parseRegisters(string(b) + "CPU#2\nRIP=000000000000fff0 RFL=00000002 CPL=0\nCR0=60000010 CR2=0000000000000000 CR3=0000000000000000 CR4=00000000\n"); err != nil || len(regs) != 3 {
		t.Errorf("with a vCPU in real mode: %d vCPUs, %v", len(regs), err)
	}
	for _, bad := range []string{"", "CPU#x\n", "CPU#0\nRIP=1\n"} {
		if _, err := parseRegisters(bad); err == nil {
			t.Errorf("parseRegisters(%q) succeeded", bad)
		}
	}
}

func TestParseMtree(t *testing.T) {
	b, err := os.ReadFile("testdata/info-mtree-f.txt")
	if err != nil {
		t.Fatal(err)
	}
	l, err := parseMtree(string(b), "mem")
	if err != nil {
		t.Fatal(err)
	}
	// 3 GiB on q35: 2 GiB low (with the VGA hole at 640 KiB), 1 GiB from 4 GiB.
	want := RAMLayout{{0, 0xa0000, 0}, {0xc0000, 0x80000000 - 0xc0000, 0xc0000}, {4 * gib, gib, 2 * gib}}
	if len(l) != len(want) {
		t.Fatalf("got %+v, want %+v", l, want)
	}
	for i := range want {
		if l[i] != want[i] {
			t.Errorf("region %d: got %+v, want %+v", i, l[i], want[i])
		}
	}
	if _, err := parseMtree(string(b), "nosuch"); err == nil {
		t.Error("a backend that is not mapped parsed")
	}
	if _, err := parseMtree(strings.ReplaceAll(string(b), `AS "memory"`, `AS "other"`), "mem"); err == nil {
		t.Error("a dump without the memory address space parsed")
	}
}

func TestRAMLayouts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layout RAMLayout
		want   RAMLayout
	}{
		{"q35 256M", Q35Layout(256 * mib), RAMLayout{{0, 256 * mib, 0}}},
		{"q35 2.75G fits below the hole", Q35Layout(0xb0000000 - 1), RAMLayout{{0, 0xb0000000 - 1, 0}}},
		{"q35 3G splits at 2G", Q35Layout(3 * gib), RAMLayout{{0, 2 * gib, 0}, {4 * gib, gib, 2 * gib}}},
		{"q35 64G", Q35Layout(64 * gib), RAMLayout{{0, 2 * gib, 0}, {4 * gib, 62 * gib, 2 * gib}}},
		{"pc 3G fits", I440FXLayout(3 * gib), RAMLayout{{0, 3 * gib, 0}}},
		{"pc 4G splits at 3G", I440FXLayout(4 * gib), RAMLayout{{0, 3 * gib, 0}, {4 * gib, gib, 3 * gib}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.layout) != len(tc.want) {
				t.Fatalf("got %+v, want %+v", tc.layout, tc.want)
			}
			for i := range tc.want {
				if tc.layout[i] != tc.want[i] {
					t.Errorf("got %+v, want %+v", tc.layout, tc.want)
				}
			}
			if err := tc.layout.Validate(tc.layout.Size()); err != nil {
				t.Error(err)
			}
		})
	}
	for _, bad := range []RAMLayout{
		nil,
		{{0, 0, 0}},
		{{0, 2 * gib, 0}, {gib, gib, 2 * gib}}, // overlapping addresses
		{{0, gib, 0}, {4 * gib, gib, gib / 2}}, // overlapping backing
		{{0, 2 * gib, 0}, {4 * gib, 2 * gib, 2 * gib}}, // beyond a 3 GiB backing
	} {
		if err := bad.Validate(3 * gib); err == nil {
			t.Errorf("layout %+v validated", bad)
		}
	}
	// Reads across the split land in the right places of the backing.
	back := make(bytesBacking, 3*mib)
	back[2*mib-1], back[2*mib] = 0xaa, 0xbb
	m, err := newPhysMem(RAMLayout{{0, 2 * mib, 0}, {4 * gib, mib, 2 * mib}}, back)
	if err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if err := m.read(b[:], 4*gib); err != nil || b[0] != 0xbb {
		t.Errorf("read above 4 GiB: %v %#x", err, b[0])
	}
	if err := m.read(b[:], 2*mib); err == nil {
		t.Error("read in the hole succeeded")
	}
}

func FuzzMonitorParse(f *testing.F) {
	for _, name := range []string{"testdata/info-registers.txt", "testdata/info-mtree-f.txt"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = parseRegisters(s)
		if l, err := parseMtree(s, "mem"); err == nil {
			if err := l.Validate(0); err != nil {
				t.Fatalf("parseMtree returned an invalid layout: %v", err)
			}
		}
	})
}
