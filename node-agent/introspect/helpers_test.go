package introspect

import (
	"encoding/binary"
	"fmt"
)

// flatMem is kernel memory for tests and fuzzing: the bytes of data appear
// at virtual address base, nothing else is mapped.
type flatMem struct {
	base uint64
	data []byte
}

func (f *flatMem) read(p []byte, va uint64) error {
	if va < f.base || va-f.base > uint64(len(f.data)) || uint64(len(p)) > uint64(len(f.data))-(va-f.base) {
		return fmt.Errorf("virtual %#x: %w", va, ErrUnmapped)
	}
	copy(p, f.data[va-f.base:])
	return nil
}

func (f *flatMem) u64(va uint64) (uint64, error) {
	var b [8]byte
	err := f.read(b[:], va)
	return binary.LittleEndian.Uint64(b[:]), err
}

func (f *flatMem) u32(va uint64) (uint32, error) {
	var b [4]byte
	err := f.read(b[:], va)
	return binary.LittleEndian.Uint32(b[:]), err
}

func (f *flatMem) put64(va, v uint64) { binary.LittleEndian.PutUint64(f.data[va-f.base:], v) }
func (f *flatMem) put32(va uint64, v uint32) {
	binary.LittleEndian.PutUint32(f.data[va-f.base:], v)
}
func (f *flatMem) putStr(va uint64, s string) { copy(f.data[va-f.base:], s+"\x00") }

// testBase is where flat test memory sits: a direct-map address.
const testBase = 0xffff888000000000

// testTypes are the structure offsets of Debian's 6.1 amd64 kernel, as its
// BTF gives them: test data for the walkers, never used by the product.
func testTypes() *kernelTypes {
	return &kernelTypes{
		taskTasks: 2192, taskPID: 2416, taskTGID: 2420, taskComm: 2976, taskRealParent: 2432, taskMM: 2272, taskFlags: 44, taskCommLen: 16, taskActiveMM: 2280,
		mmPGD: 72, mmMapCount: 104, mmStartBrk: 288, mmBrk: 296, mmStartStack: 304,
		hasMaple: true, mtRoot: 8, mapleNodeSize: 256, mr64Pivot: 8, mr64Slot: 128, mr64Meta: 248, ma64Pivot: 8, ma64Slot: 80, ma64Meta: 240,
		rangePivots: 15, rangeSlots: 16, arangePivots: 9, arangeSlots: 10, mapleLeaf64: 1, mapleRange64: 2, mapleARange64: 3,
		vmaStart: 0, vmaEnd: 8, vmaFlags: 32, vmaPgoff: 104, vmaFile: 112, vmaOps: 96, vmaPrivate: 120,
		filePath: 16, fileMapping: 216, fileInode: 32, pathMnt: 0, pathDentry: 8, dentryName: 32, dentryParent: 24, dentryHashPprev: 16,
		qstrLen: 4, qstrName: 8, mountMnt: 32, mountParent: 16, mountMountpoint: 24, vfsmountRoot: 0,
		asIPages: 8, xaHead: 8, xaNodeShift: 0, xaNodeSlots: 40, xaChunk: 64, inodeSize: 80, inodeIno: 64, pageSize: 64, pageIndex: 32,
	}
}

// taskSize is a task_struct's size in the test layout.
const taskSize = 0x1000

// buildTasks lays out init_task and n tasks linked in a ring, each with a
// pid, comm and parent, and returns the memory and init_task's address.
func buildTasks(n int) (*flatMem, uint64) {
	t := testTypes()
	m := &flatMem{base: testBase, data: make([]byte, (n+1)*taskSize)}
	addr := func(i int) uint64 { return testBase + uint64(i)*taskSize }
	for i := 0; i <= n; i++ {
		a := addr(i)
		next := addr((i + 1) % (n + 1))
		prev := addr((i + n) % (n + 1))
		m.put64(a+t.taskTasks, next+t.taskTasks)
		m.put64(a+t.taskTasks+8, prev+t.taskTasks)
		m.put32(a+t.taskPID, uint32(i))
		m.put32(a+t.taskTGID, uint32(i))
		m.putStr(a+t.taskComm, fmt.Sprintf("task%d", i))
		m.put64(a+t.taskRealParent, addr(0))
		if i > 0 {
			m.put64(a+t.taskMM, testBase+0x100000+uint64(i)*0x1000)
		}
	}
	return m, addr(0)
}

// buildMaple lays out a two-level maple tree of VMAs: an arange_64 root
// over two leaves, and returns the memory and the mm's address.
func buildMaple() (*flatMem, uint64, []vmaInfo) {
	t := testTypes()
	m := &flatMem{base: testBase, data: make([]byte, 0x10000)}
	mm := uint64(testBase)
	root := uint64(testBase + 0x1000)
	leafA := uint64(testBase + 0x1100)
	leafB := uint64(testBase + 0x1200)
	vmaAt := func(i int) uint64 { return testBase + 0x2000 + uint64(i)*0x100 }
	want := []vmaInfo{
		{start: 0x400000, end: 0x401000, flags: vmRead},
		{start: 0x401000, end: 0x403000, flags: vmRead | vmExec, pgoff: 1},
		{start: 0x7f0000000000, end: 0x7f0000021000, flags: vmRead | vmWrite},
		{start: 0x7ffff0000000, end: 0x7ffff0021000, flags: vmRead | vmWrite},
	}
	for i, v := range want {
		a := vmaAt(i)
		m.put64(a+t.vmaStart, v.start)
		m.put64(a+t.vmaEnd, v.end)
		m.put64(a+t.vmaFlags, v.flags)
		m.put64(a+t.vmaPgoff, v.pgoff)
	}
	enode := func(node, typ uint64) uint64 { return node | typ<<mapleTypeShift | 4 }
	m.put64(mm+t.mmMT+t.mtRoot, enode(root, t.mapleARange64)|2)
	// Root: [0, 0x5fffffffffff] -> leaf A, [0x600000000000, max] -> leaf B.
	m.put64(root+t.ma64Pivot, 0x5fffffffffff)
	m.put64(root+t.ma64Slot, enode(leafA, t.mapleLeaf64))
	m.put64(root+t.ma64Slot+8, enode(leafB, t.mapleLeaf64))
	m.data[root-testBase+t.ma64Meta+t.metaEnd] = 1
	// Leaf A: gap, vma0, vma1, gap up to its max.
	m.put64(leafA+t.mr64Pivot, 0x3fffff)
	m.put64(leafA+t.mr64Pivot+8, 0x400fff)
	m.put64(leafA+t.mr64Pivot+16, 0x402fff)
	m.put64(leafA+t.mr64Pivot+24, 0x5fffffffffff)
	m.put64(leafA+t.mr64Slot+8, vmaAt(0))
	m.put64(leafA+t.mr64Slot+16, vmaAt(1))
	m.data[leafA-testBase+t.mr64Meta+t.metaEnd] = 3
	// Leaf B: gap, vma2, gap, vma3, gap to max.
	m.put64(leafB+t.mr64Pivot, 0x7effffffffff)
	m.put64(leafB+t.mr64Pivot+8, 0x7f0000020fff)
	m.put64(leafB+t.mr64Pivot+16, 0x7fffefffffff)
	m.put64(leafB+t.mr64Pivot+24, 0x7ffff0020fff)
	m.put64(leafB+t.mr64Pivot+32, ^uint64(0))
	m.put64(leafB+t.mr64Slot+8, vmaAt(2))
	m.put64(leafB+t.mr64Slot+24, vmaAt(3))
	m.data[leafB-testBase+t.mr64Meta+t.metaEnd] = 4
	return m, mm, want
}

// pageTables builds x86-64 page tables inside a physical memory buffer.
type pageTables struct {
	mem    []byte
	next   uint64 // next free table
	levels int
	root   uint64
}

func newPageTables(size uint64, levels int) *pageTables {
	p := &pageTables{mem: make([]byte, size), next: size / 2, levels: levels}
	p.root = p.alloc()
	return p
}

func (p *pageTables) alloc() uint64 {
	a := p.next
	p.next += pageSize
	return a
}

// mapPage maps va to pa with a page of size 4 KiB, 2 MiB or 1 GiB.
func (p *pageTables) mapPage(va, pa, size uint64) {
	table := p.root
	for level := p.levels; level >= 1; level-- {
		shift := uint(12 + 9*(level-1))
		idx := (va >> shift) & 511
		ent := table + idx*8
		if uint64(1)<<shift == size {
			flags := uint64(pteP | pteRW)
			if level > 1 {
				flags |= ptePS
			}
			binary.LittleEndian.PutUint64(p.mem[ent:], pa|flags)
			return
		}
		e := binary.LittleEndian.Uint64(p.mem[ent:])
		if e&pteP == 0 {
			t := p.alloc()
			e = t | pteP | pteRW
			binary.LittleEndian.PutUint64(p.mem[ent:], e)
		}
		table = e & addrM
	}
}

func (p *pageTables) physMem() *physMem {
	m, err := newPhysMem(RAMLayout{{GPA: 0, Size: uint64(len(p.mem))}}, bytesBacking(p.mem))
	if err != nil {
		panic(err)
	}
	return m
}
