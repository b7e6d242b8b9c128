package introspect

import (
	"errors"
	"fmt"
)

// Reading guest files without a guest agent: a mapped file's pages are in the
// guest's page cache (file->f_mapping->i_pages, an xarray of struct page or
// folio pointers). A struct page pointer becomes a physical address through
// the kernel's vmemmap array. Pages the process has mapped are also reachable
// through its own page tables, which covers files whose page cache was
// evicted while still mapped.

// Kernel memory map constants for kernels built without
// CONFIG_RANDOMIZE_MEMORY (Documentation/arch/x86/x86_64/mm.rst); with it, the
// vmemmap_base variable says where the array is.
const (
	vmemmap4Level = 0xffffea0000000000
	vmemmap5Level = 0xffd4000000000000
	maxXAHeight   = 12
)

var errNotCached = errors.New("file page not in the guest page cache")

// pageCache finds file pages in the guest's page cache.
type pageCache struct {
	m       kmem
	t       *kernelTypes
	vmemmap uint64
}

// pagePA returns the guest physical address of page index of the file whose
// address_space is at mapping.
func (pc *pageCache) pagePA(mapping, index uint64) (uint64, error) {
	t := pc.t
	entry, err := pc.m.u64(mapping + t.asIPages + t.xaHead)
	if err != nil {
		return 0, err
	}
	chunk := uint64(t.xaChunk)
	lastShift := uint64(64)
	for level := 0; xaIsNode(entry); level++ {
		if level >= maxXAHeight {
			return 0, fmt.Errorf("page cache xarray deeper than %d: %w", maxXAHeight, ErrInconsistent)
		}
		node := entry - 2
		var sb [1]byte
		if err := pc.m.read(sb[:], node+t.xaNodeShift); err != nil {
			return 0, err
		}
		shift := uint64(sb[0])
		if shift >= lastShift || shift%6 != 0 && chunk == 64 || shift > 60 {
			return 0, fmt.Errorf("xarray node %#x: shift %d: %w", node, shift, ErrInconsistent)
		}
		lastShift = shift
		if level == 0 && index>>shift >= chunk {
			return 0, errNotCached // beyond what the tree holds
		}
		off := (index >> shift) & (chunk - 1)
		if entry, err = pc.m.u64(node + t.xaNodeSlots + 8*off); err != nil {
			return 0, err
		}
		// A sibling entry points at the canonical slot of a multi-index
		// entry (a large folio).
		if xaIsInternal(entry) && entry>>2 < chunk-1 {
			if entry, err = pc.m.u64(node + t.xaNodeSlots + 8*(entry>>2)); err != nil {
				return 0, err
			}
		}
		if xaIsNode(entry) && shift == 0 {
			return 0, fmt.Errorf("xarray node below the leaf level: %w", ErrInconsistent)
		}
	}
	if entry == 0 || entry&1 != 0 || xaIsInternal(entry) {
		return 0, errNotCached // empty, or a shadow entry of an evicted page
	}
	page := entry
	if page < pc.vmemmap || t.pageSize == 0 {
		return 0, fmt.Errorf("page pointer %#x below vmemmap: %w", page, ErrInconsistent)
	}
	// A large folio is stored once for all its indices: step from its head
	// page to the one holding index.
	head, err := pc.m.u64(page + t.pageIndex)
	if err != nil {
		return 0, err
	}
	if index > head && index-head < 1<<18 {
		page += (index - head) * t.pageSize
	} else if head != index {
		return 0, fmt.Errorf("page cache entry for index %d has index %d: %w", index, head, ErrInconsistent)
	}
	pfn := (page - pc.vmemmap) / t.pageSize
	if pfn > 1<<40 {
		return 0, fmt.Errorf("pfn %#x out of range: %w", pfn, ErrInconsistent)
	}
	return pfn << 12, nil
}

// guestFile reads one guest file by file offset: from the page cache, or else
// from the pages a process has mapped.
type guestFile struct {
	pc      *pageCache
	mem     *physMem
	mapping uint64 // address_space
	size    int64
	// Mapped views of the file in one process.
	user  *mmu
	views []vmaInfo
	// reads bounds the pages one ELF parse may touch.
	reads int
}

const maxFileReads = 4096

// ReadAt implements io.ReaderAt over the guest file.
func (f *guestFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	n := 0
	for len(p) > 0 {
		if off >= f.size {
			return n, fmt.Errorf("read past the end of the guest file (%d bytes)", f.size)
		}
		if f.reads++; f.reads > maxFileReads {
			return n, fmt.Errorf("more than %d page reads of one guest file: %w", maxFileReads, ErrLimit)
		}
		chunk := int64(pageSize) - off%pageSize
		if chunk > int64(len(p)) {
			chunk = int64(len(p))
		}
		if rest := f.size - off; chunk > rest {
			chunk = rest
		}
		pa, err := f.pagePA(uint64(off))
		if err != nil {
			return n, err
		}
		if err := f.mem.read(p[:chunk], pa+uint64(off)%pageSize); err != nil {
			return n, err
		}
		p = p[chunk:]
		off += chunk
		n += int(chunk)
	}
	return n, nil
}

func (f *guestFile) pagePA(off uint64) (uint64, error) {
	pa, err := f.pc.pagePA(f.mapping, off/pageSize)
	if err == nil {
		return pa, nil
	}
	if f.user != nil {
		for _, v := range f.views {
			base := v.pgoff * pageSize
			if off >= base && off-base < v.end-v.start {
				if upa, uerr := f.user.translate(v.start + (off - base)); uerr == nil {
					return upa &^ (pageSize - 1), nil
				}
			}
		}
	}
	return 0, err
}
