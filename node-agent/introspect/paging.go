package introspect

import (
	"fmt"
)

// x86-64 paging. Both 4-level (48-bit) and 5-level (57-bit, CR4.LA57) tables,
// 4 KiB, 2 MiB and 1 GiB pages. Every step is bounded: a walk reads at most
// one entry per level and fails on a non-present entry, a reserved large page
// or a table outside guest RAM.

const (
	pteP   = 1 << 0
	ptePS  = 1 << 7
	pteNX  = 1 << 63
	pteUS  = 1 << 2
	pteRW  = 1 << 1
	addrM  = 0x000ffffffffff000 // bits 12..51: next table or 4 KiB frame
	addr2M = 0x000fffffffe00000
	addr1G = 0x000fffffc0000000

	pageSize = 4096
)

// mmu translates virtual addresses with one set of page tables.
type mmu struct {
	mem    *physMem
	root   uint64 // physical address of the top-level table (CR3 masked)
	levels int    // 4 or 5
	// A direct-mapped software TLB of 4 KiB translations: walks are four or
	// five dependent reads, and introspection reads the same few pages
	// (task_structs, maple nodes, dentries) many times over.
	tlb [tlbSize]tlbEntry
}

const tlbSize = 1024

type tlbEntry struct {
	vpn   uint64 // virtual page number + 1 (0 = empty)
	frame uint64
}

func newMMU(mem *physMem, cr3 uint64, levels int) (*mmu, error) {
	if levels != 4 && levels != 5 {
		return nil, fmt.Errorf("paging: %d levels unsupported", levels)
	}
	return &mmu{mem: mem, root: cr3 & addrM, levels: levels}, nil
}

// canonical reports whether va is a canonical address for the paging mode.
func (m *mmu) canonical(va uint64) bool {
	bits := uint(48)
	if m.levels == 5 {
		bits = 57
	}
	top := int64(va) >> (bits - 1)
	return top == 0 || top == -1
}

func (m *mmu) flush() { m.tlb = [tlbSize]tlbEntry{} }

// translate returns the physical address of va.
func (m *mmu) translate(va uint64) (uint64, error) {
	vpn := va >> 12
	e := &m.tlb[vpn%tlbSize]
	if e.vpn == vpn+1 {
		return e.frame | va&0xfff, nil
	}
	pa, _, err := m.walk(va)
	if err != nil {
		return 0, err
	}
	e.vpn, e.frame = vpn+1, pa&^0xfff
	return pa, nil
}

// walk translates va through the tables and returns the physical address and
// the size of the page that maps it.
func (m *mmu) walk(va uint64) (pa, size uint64, err error) {
	if !m.canonical(va) {
		return 0, 0, fmt.Errorf("virtual %#x: not canonical: %w", va, ErrUnmapped)
	}
	table := m.root
	for level := m.levels; level >= 1; level-- {
		shift := uint(12 + 9*(level-1))
		idx := (va >> shift) & 511
		ent, err := m.mem.u64(table + idx*8)
		if err != nil {
			return 0, 0, fmt.Errorf("virtual %#x: level %d table at %#x: %w", va, level, table, err)
		}
		if ent&pteP == 0 {
			return 0, 0, fmt.Errorf("virtual %#x: not present at level %d: %w", va, level, ErrUnmapped)
		}
		if ent&ptePS != 0 && level > 1 {
			switch level {
			case 3:
				return ent&addr1G | va&(gib-1), gib, nil
			case 2:
				return ent&addr2M | va&(2*mib-1), 2 * mib, nil
			default:
				return 0, 0, fmt.Errorf("virtual %#x: large page bit at level %d (reserved): %w", va, level, ErrUnmapped)
			}
		}
		table = ent & addrM
	}
	return table | va&0xfff, pageSize, nil
}

// mapping is a virtually and physically contiguous run of mapped pages.
type mapping struct {
	va, pa, size uint64
}

// maxMappings bounds how many runs a range enumeration returns, and
// maxTableReads the page-table entries it reads (a 1 GiB window of 4 KiB
// pages is 2^18 entries).
const (
	maxMappings   = 1 << 16
	maxTableReads = 1 << 20
)

// mappings enumerates the present pages in [start, end) as runs that are
// contiguous in both spaces. It walks the tables rather than translating
// every page, so an unmapped 512 GiB slot costs one read.
func (m *mmu) mappings(start, end uint64) ([]mapping, error) {
	var out []mapping
	// Hostile tables can point back at themselves: bound the entries read.
	budget := maxTableReads
	var walk func(table uint64, level int, base uint64) error
	walk = func(table uint64, level int, base uint64) error {
		shift := uint(12 + 9*(level-1))
		span := uint64(1) << shift
		for idx := uint64(0); idx < 512; idx++ {
			va := base + idx*span
			if level == m.levels && idx >= 256 {
				// Upper half: sign-extend.
				va |= ^uint64(0) << (shift + 9)
			}
			if last := va + (span - 1); last < start {
				continue
			}
			if va >= end {
				return nil
			}
			if budget--; budget < 0 {
				return fmt.Errorf("paging: more than %d table entries read for %#x-%#x: %w", maxTableReads, start, end, ErrUnmapped)
			}
			ent, err := m.mem.u64(table + idx*8)
			if err != nil {
				return err
			}
			if ent&pteP == 0 {
				continue
			}
			if level == 1 || (ent&ptePS != 0 && (level == 2 || level == 3)) {
				pa := ent & addrM
				switch level {
				case 3:
					pa = ent & addr1G
				case 2:
					pa = ent & addr2M
				}
				if n := len(out); n > 0 && out[n-1].va+out[n-1].size == va && out[n-1].pa+out[n-1].size == pa {
					out[n-1].size += span
				} else {
					if len(out) >= maxMappings {
						return fmt.Errorf("paging: more than %d runs in %#x-%#x", maxMappings, start, end)
					}
					out = append(out, mapping{va: va, pa: pa, size: span})
				}
				continue
			}
			if ent&ptePS != 0 {
				continue // reserved at this level
			}
			if err := walk(ent&addrM, level-1, va); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(m.root, m.levels, 0); err != nil {
		return nil, err
	}
	return out, nil
}

// vmem reads virtual memory through an mmu.
type vmem struct {
	*mmu
}

// read fills p from virtual address va.
func (v vmem) read(p []byte, va uint64) error {
	for len(p) > 0 {
		pa, err := v.translate(va)
		if err != nil {
			return err
		}
		n := pageSize - va&0xfff
		if n > uint64(len(p)) {
			n = uint64(len(p))
		}
		if err := v.mem.read(p[:n], pa); err != nil {
			return err
		}
		p = p[n:]
		va += n
	}
	return nil
}

func (v vmem) u64(va uint64) (uint64, error) {
	if va&7 == 0 {
		pa, err := v.translate(va)
		if err != nil {
			return 0, err
		}
		return v.mem.u64(pa)
	}
	var b [8]byte
	err := v.read(b[:], va)
	return le64(b[:]), err
}

func (v vmem) u32(va uint64) (uint32, error) {
	var b [4]byte
	err := v.read(b[:], va)
	return le32(b[:]), err
}
