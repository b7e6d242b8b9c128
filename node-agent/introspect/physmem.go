package introspect

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"syscall"
)

// RAMRegion maps a range of guest physical addresses onto the guest's RAM
// backing (the memory-backend file, or QEMU's RAM block in its address space).
type RAMRegion struct {
	// GPA is the first guest physical address of the region.
	GPA uint64 `json:"gpa"`
	// Size is the length of the region in bytes.
	Size uint64 `json:"size"`
	// Offset is where the region starts in the backing.
	Offset uint64 `json:"offset"`
}

// RAMLayout is the guest physical map of RAM: where each piece of the RAM
// backing appears in the guest's physical address space. On x86 the RAM is
// split around the PCI hole below 4 GiB.
type RAMLayout []RAMRegion

const (
	gib = 1 << 30
	mib = 1 << 20
)

// Q35Layout is the RAM layout QEMU's q35 machine (KubeVirt's default) uses for
// ramSize bytes of RAM: RAM up to 2 GiB (or up to 2.75 GiB when it all fits
// below the PCI hole) is mapped from address 0, the rest from 4 GiB.
func Q35Layout(ramSize uint64) RAMLayout {
	lowmem := uint64(0xb0000000)
	if ramSize >= 0xb0000000 {
		lowmem = 0x80000000
	}
	return splitLayout(ramSize, lowmem)
}

// I440FXLayout is the RAM layout of QEMU's pc (i440fx) machine, whose PCI
// hole starts at 3 GiB (3.5 GiB when all RAM fits below it).
func I440FXLayout(ramSize uint64) RAMLayout {
	lowmem := uint64(0xe0000000)
	if ramSize >= 0xe0000000 {
		lowmem = 0xc0000000
	}
	return splitLayout(ramSize, lowmem)
}

func splitLayout(ramSize, lowmem uint64) RAMLayout {
	if ramSize <= lowmem {
		return RAMLayout{{GPA: 0, Size: ramSize, Offset: 0}}
	}
	return RAMLayout{
		{GPA: 0, Size: lowmem, Offset: 0},
		{GPA: 4 * gib, Size: ramSize - lowmem, Offset: lowmem},
	}
}

// Validate checks that regions are sorted, do not overlap in either space and
// lie inside a backing of backingSize bytes (0: unknown).
func (l RAMLayout) Validate(backingSize uint64) error {
	if len(l) == 0 {
		return errors.New("ram layout: no regions")
	}
	for i, r := range l {
		if r.Size == 0 {
			return fmt.Errorf("ram layout: region %d is empty", i)
		}
		if r.GPA+r.Size < r.GPA || r.Offset+r.Size < r.Offset {
			return fmt.Errorf("ram layout: region %d overflows", i)
		}
		if backingSize != 0 && r.Offset+r.Size > backingSize {
			return fmt.Errorf("ram layout: region %d (gpa %#x, %d bytes at offset %#x) lies beyond the %d-byte RAM backing", i, r.GPA, r.Size, r.Offset, backingSize)
		}
		if i > 0 && l[i-1].GPA+l[i-1].Size > r.GPA {
			return fmt.Errorf("ram layout: regions %d and %d overlap or are not sorted", i-1, i)
		}
	}
	byOff := append(RAMLayout(nil), l...)
	sort.Slice(byOff, func(i, j int) bool { return byOff[i].Offset < byOff[j].Offset })
	for i := 1; i < len(byOff); i++ {
		if byOff[i-1].Offset+byOff[i-1].Size > byOff[i].Offset {
			return errors.New("ram layout: two regions map the same backing bytes")
		}
	}
	return nil
}

// Size is the total RAM the layout maps.
func (l RAMLayout) Size() uint64 {
	var n uint64
	for _, r := range l {
		n += r.Size
	}
	return n
}

// lookup returns the backing offset of gpa and how many bytes from there on
// are contiguous in the backing.
func (l RAMLayout) lookup(gpa uint64) (off, avail uint64, ok bool) {
	// At most a handful of regions: a linear scan beats a binary search.
	for _, r := range l {
		if gpa >= r.GPA && gpa-r.GPA < r.Size {
			d := gpa - r.GPA
			return r.Offset + d, r.Size - d, true
		}
	}
	return 0, 0, false
}

// ErrUnmapped is returned for a guest physical address outside guest RAM or a
// virtual address the page tables do not map.
var ErrUnmapped = errors.New("address not mapped")

// backing is where guest RAM bytes come from.
type backing interface {
	// readAt fills p from backing offset off.
	readAt(p []byte, off uint64) error
	// slice returns the backing bytes [off, off+n) without copying, or nil
	// when the backing cannot hand out memory.
	slice(off, n uint64) []byte
	size() uint64
	close() error
}

// physMem reads guest physical memory.
type physMem struct {
	layout RAMLayout
	b      backing
}

func newPhysMem(layout RAMLayout, b backing) (*physMem, error) {
	if err := layout.Validate(b.size()); err != nil {
		return nil, err
	}
	return &physMem{layout: layout, b: b}, nil
}

// read fills p from guest physical address gpa.
func (m *physMem) read(p []byte, gpa uint64) error {
	for len(p) > 0 {
		off, avail, ok := m.layout.lookup(gpa)
		if !ok {
			return fmt.Errorf("guest physical %#x: %w", gpa, ErrUnmapped)
		}
		n := uint64(len(p))
		if n > avail {
			n = avail
		}
		if err := m.b.readAt(p[:n], off); err != nil {
			return fmt.Errorf("guest physical %#x: %w", gpa, err)
		}
		p = p[n:]
		gpa += n
	}
	return nil
}

// slice returns n bytes at gpa without copying, or nil.
func (m *physMem) slice(gpa, n uint64) []byte {
	off, avail, ok := m.layout.lookup(gpa)
	if !ok || avail < n {
		return nil
	}
	return m.b.slice(off, n)
}

func (m *physMem) u64(gpa uint64) (uint64, error) {
	if s := m.slice(gpa, 8); s != nil {
		return le64(s), nil
	}
	var b [8]byte
	if err := m.read(b[:], gpa); err != nil {
		return 0, err
	}
	return le64(b[:]), nil
}

// fileBacking maps a memory-backend file read-only.
type fileBacking struct {
	data []byte
}

func openFileBacking(path string) (*fileBacking, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open guest memory file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() <= 0 || st.Size() > 1<<46 {
		return nil, fmt.Errorf("guest memory file %s: size %d is not a guest RAM size", path, st.Size())
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap guest memory file %s: %w", path, err)
	}
	return &fileBacking{data: data}, nil
}

func (f *fileBacking) readAt(p []byte, off uint64) error {
	if off > uint64(len(f.data)) || uint64(len(p)) > uint64(len(f.data))-off {
		return ErrUnmapped
	}
	copy(p, f.data[off:])
	return nil
}

func (f *fileBacking) slice(off, n uint64) []byte {
	if off > uint64(len(f.data)) || n > uint64(len(f.data))-off {
		return nil
	}
	return f.data[off : off+n : off+n]
}

func (f *fileBacking) size() uint64 { return uint64(len(f.data)) }

func (f *fileBacking) close() error {
	if f.data == nil {
		return nil
	}
	err := syscall.Munmap(f.data)
	f.data = nil
	return err
}

// procMemBacking reads QEMU's RAM block through /proc/<pid>/mem: the only way
// to reach anonymous guest RAM (KubeVirt's default memory backend).
type procMemBacking struct {
	f    *os.File
	hva  uint64 // host virtual address of the RAM block in QEMU
	len  uint64
	name string
}

func openProcMemBacking(pid int, hva, size uint64) (*procMemBacking, error) {
	name := fmt.Sprintf("/proc/%d/mem", pid)
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("open %s (needs CAP_SYS_PTRACE over QEMU): %w", name, err)
	}
	return &procMemBacking{f: f, hva: hva, len: size, name: name}, nil
}

func (p *procMemBacking) readAt(b []byte, off uint64) error {
	if off > p.len || uint64(len(b)) > p.len-off {
		return ErrUnmapped
	}
	n, err := p.f.ReadAt(b, int64(p.hva+off))
	if n == len(b) {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("short read of %s", p.name)
	}
	return err
}

func (p *procMemBacking) slice(off, n uint64) []byte { return nil }
func (p *procMemBacking) size() uint64               { return p.len }
func (p *procMemBacking) close() error               { return p.f.Close() }

// bytesBacking serves guest RAM from a byte slice (tests, fuzzing).
type bytesBacking []byte

func (b bytesBacking) readAt(p []byte, off uint64) error {
	if off > uint64(len(b)) || uint64(len(p)) > uint64(len(b))-off {
		return ErrUnmapped
	}
	copy(p, b[off:])
	return nil
}
func (b bytesBacking) slice(off, n uint64) []byte {
	if off > uint64(len(b)) || n > uint64(len(b))-off {
		return nil
	}
	return b[off : off+n : off+n]
}
func (b bytesBacking) size() uint64 { return uint64(len(b)) }
func (b bytesBacking) close() error { return nil }

// guardFaults turns a memory fault while reading the mapped RAM file (the file
// shrank under us) into an error instead of crashing the agent. Use as
//
//	defer guardFaults(&err)()
func guardFaults(err *error) func() {
	old := debug.SetPanicOnFault(true)
	return func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			*err = fmt.Errorf("fault reading guest memory: %v", r)
		}
	}
}

func le16(b []byte) uint16 { return uint16(b[0]) | uint16(b[1])<<8 }
func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
func le64(b []byte) uint64 { return uint64(le32(b)) | uint64(le32(b[4:]))<<32 }
