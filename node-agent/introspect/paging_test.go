package introspect

import (
	"errors"
	"testing"
)

func TestTranslate(t *testing.T) {
	for _, levels := range []int{4, 5} {
		pt := newPageTables(64*mib, levels)
		// 4 KiB, 2 MiB and 1 GiB pages, in the user and kernel halves.
		pt.mapPage(0x400000, 0x10000, pageSize)
		pt.mapPage(0xffffffff81000000, 2*mib, 2*mib)
		pt.mapPage(0xffff888000000000, 0, gib)
		top := uint64(0xff11000000000000) // a 5-level direct map address
		if levels == 5 {
			pt.mapPage(top, 4*mib, 2*mib)
		}
		m, err := newMMU(pt.physMem(), pt.root, levels)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			va, pa uint64
			size   uint64
		}{
			{0x400123, 0x10123, pageSize},
			{0xffffffff81001234, 2*mib + 0x1234, 2 * mib},
			{0xffff888000abcdef, 0xabcdef, gib},
		} {
			pa, size, err := m.walk(tc.va)
			if err != nil || pa != tc.pa || size != tc.size {
				t.Errorf("%d-level walk(%#x) = %#x, %d, %v; want %#x, %d", levels, tc.va, pa, size, err, tc.pa, tc.size)
			}
			// Twice: the second comes from the TLB.
			for i := 0; i < 2; i++ {
				if pa, err := m.translate(tc.va); err != nil || pa != tc.pa {
					t.Errorf("translate(%#x) = %#x, %v", tc.va, pa, err)
				}
			}
		}
		if levels == 5 {
			if pa, err := m.translate(top + 5); err != nil || pa != 4*mib+5 {
				t.Errorf("5-level address: %#x %v", pa, err)
			}
		} else if _, err := m.translate(top); !errors.Is(err, ErrUnmapped) {
			t.Errorf("a 57-bit address with 4-level paging: %v", err)
		}
		for _, va := range []uint64{0x500000, 0x0000800000000000, 0xffffffff7fe00000} {
			if _, err := m.translate(va); !errors.Is(err, ErrUnmapped) {
				t.Errorf("%d-level translate(%#x): got %v, want ErrUnmapped", levels, va, err)
			}
		}
		runs, err := m.mappings(kernelImageStart, kernelImageEnd)
		if err != nil || len(runs) != 1 || runs[0].va != 0xffffffff81000000 || runs[0].size != 2*mib {
			t.Errorf("%d-level kernel image runs: %+v %v", levels, runs, err)
		}
	}
}

func TestPageTableLoops(t *testing.T) {
	// Every entry of the root points back at the root: walks must stop.
	pt := newPageTables(1*mib, 4)
	for i := uint64(0); i < 512; i++ {
		putLE64(pt.mem[pt.root+8*i:], pt.root|pteP)
	}
	m, _ := newMMU(pt.physMem(), pt.root, 4)
	if _, err := m.translate(0xffffffff81000000); err != nil {
		// A self-map resolves to the table itself: fine, but bounded.
		_ = err
	}
	if _, err := m.mappings(0, ^uint64(0)); err == nil {
		t.Fatal("enumerating a self-referencing table of every address succeeded")
	}
	// A table outside guest RAM.
	pt = newPageTables(1*mib, 4)
	putLE64(pt.mem[pt.root+511*8:], 0x7fff000|pteP)
	m, _ = newMMU(pt.physMem(), pt.root, 4)
	if _, err := m.translate(0xffffffff81000000); !errors.Is(err, ErrUnmapped) {
		t.Errorf("table outside RAM: got %v", err)
	}
	// The large-page bit at the top level is reserved.
	pt = newPageTables(1*mib, 4)
	putLE64(pt.mem[pt.root+511*8:], pteP|ptePS)
	m, _ = newMMU(pt.physMem(), pt.root, 4)
	if _, err := m.translate(0xffffffff81000000); !errors.Is(err, ErrUnmapped) {
		t.Errorf("PS at level 4: got %v", err)
	}
}

func putLE64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (8 * i))
	}
}

func FuzzPageWalk(f *testing.F) {
	pt := newPageTables(256*1024, 4)
	pt.mapPage(0xffffffff81000000, 0x1000, pageSize)
	pt.mapPage(0x400000, 0x2000, pageSize)
	f.Add(pt.mem, pt.root, uint64(0xffffffff81000123), false)
	f.Add(pt.mem, pt.root, uint64(0x400000), true)
	f.Fuzz(func(t *testing.T, mem []byte, root, va uint64, five bool) {
		if len(mem) == 0 || len(mem) > 1<<20 {
			return
		}
		levels := 4
		if five {
			levels = 5
		}
		pm, err := newPhysMem(RAMLayout{{0, uint64(len(mem)), 0}}, bytesBacking(mem))
		if err != nil {
			return
		}
		m, _ := newMMU(pm, root, levels)
		pa, size, err := m.walk(va)
		if err == nil && size != pageSize && size != 2*mib && size != gib {
			t.Fatalf("walk returned page size %d", size)
		}
		if err == nil && pa&(size-1) != va&(size-1) {
			t.Fatalf("walk lost the page offset: va %#x pa %#x size %#x", va, pa, size)
		}
		_, _ = m.translate(va)
		runs, _ := m.mappings(kernelImageStart, kernelImageEnd)
		if len(runs) > maxMappings {
			t.Fatalf("%d runs past the bound", len(runs))
		}
	})
}
