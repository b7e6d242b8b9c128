package introspect

import (
	"errors"
	"testing"
)

func TestWalkTasks(t *testing.T) {
	m, init := buildTasks(5)
	kt := testTypes()
	tasks, err := walkTasks(m, kt, init, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) != 5 {
		t.Fatalf("got %d tasks, want 5", len(tasks))
	}
	for i, ti := range tasks {
		if ti.pid != i+1 || ti.comm != "task"+string(rune('1'+i)) || ti.ppid != 0 {
			t.Errorf("task %d: %+v", i, ti)
		}
	}
	// Hostile lists: a loop that skips init_task, a count bound, a wild link.
	for _, tc := range []struct {
		name string
		mod  func(m *flatMem)
		max  int
		want error
	}{
		{"cycle", func(m *flatMem) { m.put64(init+3*taskSize+kt.taskTasks, init+1*taskSize+kt.taskTasks) }, 100, ErrInconsistent},
		{"limit", func(*flatMem) {}, 3, ErrLimit},
		{"user pointer", func(m *flatMem) { m.put64(init+2*taskSize+kt.taskTasks, 0x1000) }, 100, ErrInconsistent},
		{"unmapped", func(m *flatMem) { m.put64(init+2*taskSize+kt.taskTasks, 0xffffffffff000000) }, 100, ErrUnmapped},
		{"bad pid", func(m *flatMem) { m.put32(init+2*taskSize+kt.taskPID, 0xffffffff) }, 100, ErrInconsistent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, init := buildTasks(5)
			tc.mod(m)
			_, err := walkTasks(m, kt, init, tc.max)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestWalkMaple(t *testing.T) {
	m, mm, want := buildMaple()
	kt := testTypes()
	got, err := walkVMAs(m, kt, mm, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d areas, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].start != want[i].start || got[i].end != want[i].end || got[i].flags != want[i].flags || got[i].pgoff != want[i].pgoff {
			t.Errorf("area %d: got %+v want %+v", i, got[i], want[i])
		}
	}
	root := uint64(testBase + 0x1000)
	leafA := uint64(testBase + 0x1100)
	for _, tc := range []struct {
		name string
		mod  func(m *flatMem)
		max  int
		want error
	}{
		// A child pointing back at the root: depth and node bounds stop it.
		{"self reference", func(m *flatMem) { m.put64(root+kt.ma64Slot, root|kt.mapleARange64<<3|4) }, 100, ErrInconsistent},
		{"bad type", func(m *flatMem) { m.put64(root+kt.ma64Slot, leafA|7<<3|4) }, 100, ErrInconsistent},
		{"pivots out of order", func(m *flatMem) { m.put64(leafA+kt.mr64Pivot+8, 0x10) }, 100, ErrInconsistent},
		{"area outside its slot", func(m *flatMem) { m.put64(testBase+0x2000+kt.vmaEnd, 0x500000) }, 100, ErrInconsistent},
		{"limit", func(*flatMem) {}, 2, ErrLimit},
		{"end beyond slots", func(m *flatMem) { m.data[root-testBase+kt.ma64Meta] = 200 }, 100, ErrInconsistent},
		{"root not a node", func(m *flatMem) { m.put64(mm+kt.mtRoot, 0x1234) }, 100, ErrInconsistent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, mm, _ := buildMaple()
			tc.mod(m)
			_, err := walkVMAs(m, kt, mm, tc.max)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestWalkVMAList(t *testing.T) {
	kt := testTypes()
	kt.hasMaple, kt.mmMmap, kt.vmaNext = false, 16, 16+0x80
	m := &flatMem{base: testBase, data: make([]byte, 0x4000)}
	mm := uint64(testBase)
	a, b := uint64(testBase+0x1000), uint64(testBase+0x2000)
	m.put64(mm+kt.mmMmap, a)
	m.put64(a+kt.vmaStart, 0x400000)
	m.put64(a+kt.vmaEnd, 0x401000)
	m.put64(a+kt.vmaNext, b)
	m.put64(b+kt.vmaStart, 0x500000)
	m.put64(b+kt.vmaEnd, 0x502000)
	got, err := walkVMAs(m, kt, mm, 10)
	if err != nil || len(got) != 2 {
		t.Fatalf("got %+v, %v", got, err)
	}
	m.put64(b+kt.vmaNext, a) // loop back
	if _, err := walkVMAs(m, kt, mm, 10); !errors.Is(err, ErrInconsistent) {
		t.Fatalf("loop: got %v, want ErrInconsistent", err)
	}
}

func TestDentryPath(t *testing.T) {
	kt := testTypes()
	m := &flatMem{base: testBase, data: make([]byte, 0x10000)}
	// Mount tree: the root mount (its own parent) and /lib mounted on it.
	rootMount, libMount := uint64(testBase), uint64(testBase+0x100)
	rootDentry, libDir, libRoot, file := uint64(testBase+0x1000), uint64(testBase+0x1100), uint64(testBase+0x1200), uint64(testBase+0x1300)
	name := func(d uint64, s string, at uint64) {
		m.put32(d+kt.dentryName+kt.qstrLen, uint32(len(s)))
		m.put64(d+kt.dentryName+kt.qstrName, at)
		m.putStr(at, s)
	}
	m.put64(rootMount+kt.mountParent, rootMount)
	m.put64(rootMount+kt.mountMnt+kt.vfsmountRoot, rootDentry)
	m.put64(libMount+kt.mountParent, rootMount)
	m.put64(libMount+kt.mountMountpoint, libDir)
	m.put64(libMount+kt.mountMnt+kt.vfsmountRoot, libRoot)
	m.put64(rootDentry+kt.dentryParent, rootDentry)
	m.put64(libDir+kt.dentryParent, rootDentry)
	name(libDir, "lib", testBase+0x3000)
	m.put64(libRoot+kt.dentryParent, libRoot)
	m.put64(file+kt.dentryParent, libRoot)
	m.put64(file+kt.dentryHashPprev, testBase+0x8) // hashed: not deleted
	name(file, "libvictim.so", testBase+0x3100)
	got, err := dentryPath(m, kt, libMount+kt.mountMnt, file, 16)
	if err != nil || got != "/lib/libvictim.so" {
		t.Fatalf("got %q, %v; want /lib/libvictim.so", got, err)
	}
	m.put64(file+kt.dentryHashPprev, 0)
	if got, _ := dentryPath(m, kt, libMount+kt.mountMnt, file, 16); got != "/lib/libvictim.so (deleted)" {
		t.Errorf("unlinked file: got %q", got)
	}
	// A parent loop that never reaches a root.
	other := uint64(testBase + 0x1400)
	name(other, "x", testBase+0x3200)
	m.put64(other+kt.dentryParent, file)
	m.put64(file+kt.dentryParent, other)
	if _, err := dentryPath(m, kt, libMount+kt.mountMnt, file, 16); !errors.Is(err, ErrLimit) {
		t.Errorf("dentry loop: got %v, want ErrLimit", err)
	}
	m.put32(file+kt.dentryName+kt.qstrLen, 4000)
	if _, err := dentryPath(m, kt, libMount+kt.mountMnt, file, 16); !errors.Is(err, ErrInconsistent) {
		t.Errorf("absurd name length: got %v", err)
	}
}

func TestCString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"victim\x00junk", "victim"},
		{"a\x1b[31mb", `a\x1b[31mb`},
		{"", ""},
	} {
		if got := cString([]byte(tc.in)); got != tc.want {
			t.Errorf("cString(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzTaskList(f *testing.F) {
	m, _ := buildTasks(3)
	f.Add(m.data, uint32(0))
	f.Fuzz(func(t *testing.T, data []byte, start uint32) {
		m := &flatMem{base: testBase, data: data}
		kt := testTypes()
		tasks, _ := walkTasks(m, kt, testBase+uint64(start), 64)
		if len(tasks) > 64 {
			t.Fatalf("walk returned %d tasks past its bound", len(tasks))
		}
		_, _ = readTask(m, kt, testBase+uint64(start))
		_, _ = dentryPath(m, kt, testBase+uint64(start), testBase+uint64(start)+64, 32)
		mods, _ := walkModules(m, moduleTypes(), testBase+uint64(start))
		for _, mod := range mods {
			mod.loadSymbols(m, moduleTypes())
		}
	})
}

func FuzzVMAWalk(f *testing.F) {
	m, mm, _ := buildMaple()
	f.Add(m.data, uint32(mm-testBase), true)
	f.Fuzz(func(t *testing.T, data []byte, mmOff uint32, maple bool) {
		m := &flatMem{base: testBase, data: data}
		kt := testTypes()
		if !maple {
			kt.hasMaple, kt.mmMmap, kt.vmaNext = false, 16, 144
		}
		vmas, _ := walkVMAs(m, kt, testBase+uint64(mmOff), 128)
		if len(vmas) > 128 {
			t.Fatalf("walk returned %d areas past its bound", len(vmas))
		}
		for i := 1; i < len(vmas); i++ {
			if vmas[i].start < vmas[i-1].end {
				t.Fatalf("areas overlap: %+v", vmas)
			}
		}
		pc := &pageCache{m: m, t: kt, vmemmap: testBase}
		_, _ = pc.pagePA(testBase+uint64(mmOff), uint64(mmOff)*7)
	})
}

func moduleTypes() *kernelTypes {
	kt := testTypes()
	kt.hasModules, kt.modList, kt.modName, kt.modNameLen, kt.modBase, kt.modTextSize = true, 8, 24, 56, 320, 332
	kt.modKallsyms, kt.mksSymtab, kt.mksNum, kt.mksStrtab = 400, 0, 8, 16
	return kt
}

func TestWalkModules(t *testing.T) {
	kt := moduleTypes()
	m := &flatMem{base: testBase, data: make([]byte, 0x8000)}
	head := uint64(testBase)
	mod := uint64(testBase + 0x1000)
	mks := uint64(testBase + 0x2000)
	symtab := uint64(testBase + 0x3000)
	strtab := uint64(testBase + 0x4000)
	base := uint64(0xffffffffc0a00000)
	m.put64(head, mod+kt.modList)
	m.put64(mod+kt.modList, head)
	m.putStr(mod+kt.modName, "dummy")
	m.put64(mod+kt.modBase, base)
	m.put32(mod+kt.modTextSize, 0x1000)
	m.put64(mod+kt.modKallsyms, mks)
	m.put64(mks+kt.mksSymtab, symtab)
	m.put32(mks+kt.mksNum, 2)
	m.put64(mks+kt.mksStrtab, strtab)
	m.putStr(strtab+1, "dummy_setup")
	m.putStr(strtab+13, "dummy_xmit")
	for i, s := range []struct{ name, value, size uint64 }{{1, base + 0x150, 0x100}, {13, base + 0x300, 0x40}} {
		e := symtab + uint64(i)*elfSymSize
		m.put32(e, uint32(s.name))
		m.data[e-testBase+6] = 1 // section index
		m.put64(e+8, s.value)
		m.put64(e+16, s.size)
	}
	mods, err := walkModules(m, kt, head)
	if err != nil || len(mods) != 1 || mods[0].name != "dummy" {
		t.Fatalf("got %+v, %v", mods, err)
	}
	k := moduleAt(mods, base+0x305)
	if k == nil {
		t.Fatal("no module holds its own text")
	}
	k.loadSymbols(m, kt)
	if name, off, ok := k.lookup(base + 0x305); !ok || name != "dummy_xmit" || off != 5 {
		t.Errorf("lookup = %s+%d %v", name, off, ok)
	}
	if _, _, ok := k.lookup(base + 0x260); ok {
		t.Error("an address between functions resolved")
	}
	if moduleAt(mods, base+0x1000) != nil {
		t.Error("an address past the module's text matched it")
	}
	m.put64(mod+kt.modList, mod+kt.modList) // a loop that skips the head
	if _, err := walkModules(m, kt, head); !errors.Is(err, ErrInconsistent) {
		t.Errorf("loop: got %v", err)
	}
}
