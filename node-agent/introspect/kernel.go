package introspect

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf/btf"
)

// The kernel image lives in the top 2 GiB of the address space; with KASLR it
// moves inside [__START_KERNEL_map, __START_KERNEL_map + KERNEL_IMAGE_SIZE),
// the same window for 4- and 5-level paging.
const (
	kernelImageStart = 0xffffffff80000000
	kernelImageEnd   = 0xffffffffc0000000
	// maxBTFSize bounds the BTF blob read from guest memory (vmlinux BTF is
	// ~5 MiB for a distribution kernel).
	maxBTFSize = 64 << 20
	// maxCPUs bounds the per-CPU offset table.
	maxCPUs = 8192
)

// kernel is what introspection learnt about one guest kernel.
type kernel struct {
	mmu     *mmu // kernel page tables
	levels  int
	image   []mapping
	types   *kernelTypes
	syms    kernelSymbols
	btfHash [32]byte
	btfVA   uint64
	btfSize uint64
	// perCPU are the per-CPU area offsets (__per_cpu_offset[]).
	perCPU []uint64
	// symbolSource says where kernel symbols came from: "kallsyms" or
	// "System.map".
	symbolSource string
	kallsyms     *kallsymsTables
}

// KernelCache shares what is learnt about a kernel build (structure offsets
// from its BTF, its symbol table) between guests running the same build, so
// a node with fifty guests of one distribution kernel parses it once. It is
// safe for concurrent use; the zero value is ready.
type KernelCache struct {
	mu    sync.Mutex
	types map[[32]byte]*kernelTypes
	syms  map[[32]byte]*symTable
}

func (c *KernelCache) getTypes(h [32]byte) *kernelTypes {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.types[h]
}

func (c *KernelCache) putTypes(h [32]byte, t *kernelTypes) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.types == nil {
		c.types = map[[32]byte]*kernelTypes{}
	}
	c.types[h] = t
}

func (c *KernelCache) getSyms(h [32]byte) *symTable {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.syms[h]
}

func (c *KernelCache) putSyms(h [32]byte, t *symTable) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.syms == nil {
		c.syms = map[[32]byte]*symTable{}
	}
	c.syms[h] = t
}

// pagingLevels is 5 when any vCPU runs with CR4.LA57.
func pagingLevels(regs []VCPURegisters) int {
	for _, r := range regs {
		if r.CR4&cr4LA57 != 0 {
			return 5
		}
	}
	return 4
}

// kernelRoot picks the kernel's top-level page table among the vCPUs' CR3s:
// with page-table isolation a vCPU in user mode runs on the user copy (CR3
// bit 12 set), which maps almost none of the kernel image, so the candidate
// that maps the most of the image window wins.
func kernelRoot(mem *physMem, regs []VCPURegisters, levels int) (*mmu, []mapping, error) {
	var best *mmu
	var bestRuns []mapping
	var bestSize uint64
	seen := map[uint64]bool{}
	var errs []error
	for _, r := range regs {
		if r.CR3&addrM == 0 {
			continue
		}
		for _, root := range []uint64{r.CR3 & addrM, r.CR3 & addrM &^ (1 << 12)} {
			if seen[root] {
				continue
			}
			seen[root] = true
			m, err := newMMU(mem, root, levels)
			if err != nil {
				return nil, nil, err
			}
			runs, err := m.mappings(kernelImageStart, kernelImageEnd)
			if err != nil {
				errs = append(errs, fmt.Errorf("cr3 %#x: %w", root, err))
				continue
			}
			var size uint64
			for _, run := range runs {
				size += run.size
			}
			if size > bestSize {
				best, bestRuns, bestSize = m, runs, size
			}
		}
	}
	if best == nil {
		return nil, nil, fmt.Errorf("no vCPU's page tables map a kernel image at %#x-%#x: %w", uint64(kernelImageStart), uint64(kernelImageEnd), errors.Join(errs...))
	}
	return best, bestRuns, nil
}

// scanImage calls fn for every occurrence of pat (at addresses aligned to
// align) in the mapped image; fn returns false to stop.
func scanImage(mem *physMem, runs []mapping, pat []byte, align uint64, fn func(va uint64) bool) error {
	const chunk = 4 << 20
	buf := make([]byte, 0)
	for _, run := range runs {
		for off := uint64(0); off < run.size; off += chunk {
			n := uint64(chunk + len(pat) - 1)
			if off+n > run.size {
				n = run.size - off
			}
			data := mem.slice(run.pa+off, n)
			if data == nil {
				if uint64(cap(buf)) < n {
					buf = make([]byte, n)
				}
				data = buf[:n]
				if err := mem.read(data, run.pa+off); err != nil {
					return err
				}
			}
			for i := 0; ; {
				j := bytes.Index(data[i:], pat)
				if j < 0 {
					break
				}
				pos := uint64(i + j)
				if pos >= chunk {
					break // the next chunk sees it
				}
				va := run.va + off + pos
				if va%align == 0 && !fn(va) {
					return nil
				}
				i += j + 1
			}
		}
	}
	return nil
}

// btfMagic is the start of a vmlinux BTF header: magic 0xeB9F, version 1,
// flags 0, hdr_len 24.
var btfMagic = []byte{0x9f, 0xeb, 0x01, 0x00, 0x18, 0x00, 0x00, 0x00}

// btfHeaderSize reads a BTF header and returns the blob's total size.
func btfHeaderSize(h []byte) (uint64, error) {
	if len(h) < 24 || !bytes.Equal(h[:8], btfMagic) {
		return 0, errors.New("not a BTF header")
	}
	typeOff, typeLen := uint64(le32(h[8:])), uint64(le32(h[12:]))
	strOff, strLen := uint64(le32(h[16:])), uint64(le32(h[20:]))
	end := typeOff + typeLen
	if e := strOff + strLen; e > end {
		end = e
	}
	if typeLen == 0 || strLen == 0 || end+24 > maxBTFSize {
		return 0, fmt.Errorf("BTF header sizes out of range (types %d+%d, strings %d+%d)", typeOff, typeLen, strOff, strLen)
	}
	return 24 + end, nil
}

// parseBTF parses a raw BTF blob with cilium/ebpf, turning a panic on hostile
// input into an error.
func parseBTF(blob []byte) (spec *btf.Spec, err error) {
	defer func() {
		if r := recover(); r != nil {
			spec, err = nil, fmt.Errorf("BTF parser panicked: %v", r)
		}
	}()
	return btf.LoadSpecFromReader(bytes.NewReader(blob))
}

// loadTypes parses BTF and extracts the kernel types.
func loadTypes(blob []byte) (*kernelTypes, error) {
	spec, err := parseBTF(blob)
	if err != nil {
		return nil, fmt.Errorf("parse BTF: %w", err)
	}
	return extractTypes(spec)
}

// findBTF finds the kernel's BTF in the image and loads the types.
func findBTF(v vmem, runs []mapping, cache *KernelCache) (*kernelTypes, [32]byte, uint64, uint64, error) {
	var types *kernelTypes
	var hash [32]byte
	var at, size uint64
	var errs []error
	hdr := make([]byte, 24)
	err := scanImage(v.mem, runs, btfMagic, 4, func(va uint64) bool {
		if err := v.read(hdr, va); err != nil {
			return true
		}
		n, err := btfHeaderSize(hdr)
		if err != nil {
			errs = append(errs, fmt.Errorf("BTF candidate at %#x: %w", va, err))
			return true
		}
		blob := make([]byte, n)
		if err := v.read(blob, va); err != nil {
			errs = append(errs, fmt.Errorf("BTF candidate at %#x: %w", va, err))
			return true
		}
		h := sha256.Sum256(blob)
		t := cache.getTypes(h)
		if t == nil {
			if t, err = loadTypes(blob); err != nil {
				errs = append(errs, fmt.Errorf("BTF at %#x: %w", va, err))
				// A hostile guest can plant decoys: parse a few at most.
				return len(errs) < 4
			}
			cache.putTypes(h, t)
		}
		types, hash, at, size = t, h, va, n
		return false
	})
	if err != nil {
		return nil, hash, 0, 0, err
	}
	if types == nil {
		if len(errs) == 0 {
			return nil, hash, 0, 0, errors.New("no BTF in the kernel image (kernel built without CONFIG_DEBUG_INFO_BTF?)")
		}
		return nil, hash, 0, 0, errors.Join(errs...)
	}
	return types, hash, at, size, nil
}

// findSymbols finds and decodes kallsyms in the image.
func findSymbols(v vmem, runs []mapping, cache *KernelCache) (kernelSymbols, *kallsymsTables, error) {
	var syms kernelSymbols
	var tables *kallsymsTables
	var errs []error
	err := scanImage(v.mem, runs, digitTokens, 1, func(va uint64) bool {
		s, t, err := findKallsyms(v, va, runs)
		if err != nil {
			errs = append(errs, fmt.Errorf("candidate at %#x: %w", va, err))
			return len(errs) < 8
		}
		syms, tables = s, t
		return false
	})
	if err != nil {
		return kernelSymbols{}, nil, err
	}
	if syms.symTable == nil {
		if len(errs) == 0 {
			return kernelSymbols{}, nil, errors.New("kallsyms: no token table in the kernel image (CONFIG_KALLSYMS off?)")
		}
		return kernelSymbols{}, nil, errors.Join(errs...)
	}
	// Share the table with other guests running the same build.
	h := sha256.New()
	for _, o := range syms.offs {
		h.Write([]byte{byte(o), byte(o >> 8), byte(o >> 16), byte(o >> 24)})
	}
	h.Write(syms.blob)
	var key [32]byte
	copy(key[:], h.Sum(nil))
	if shared := cache.getSyms(key); shared != nil {
		syms.symTable = shared
	} else {
		cache.putSyms(key, syms.symTable)
	}
	return syms, tables, nil
}

// perCPUOffsets reads __per_cpu_offset[0:nr_cpu_ids].
func perCPUOffsets(v vmem, syms kernelSymbols) ([]uint64, error) {
	arr, ok := syms.sym("__per_cpu_offset")
	if !ok {
		return nil, errors.New("no __per_cpu_offset symbol")
	}
	n := uint64(1)
	if p, ok := syms.sym("nr_cpu_ids"); ok {
		c, err := v.u32(p)
		if err != nil {
			return nil, fmt.Errorf("nr_cpu_ids: %w", err)
		}
		n = uint64(c)
	}
	if n == 0 || n > maxCPUs {
		return nil, fmt.Errorf("nr_cpu_ids = %d is out of range", n)
	}
	out := make([]uint64, n)
	for i := range out {
		o, err := v.u64(arr + uint64(i)*8)
		if err != nil {
			return nil, fmt.Errorf("__per_cpu_offset[%d]: %w", i, err)
		}
		out[i] = o
	}
	return out, nil
}

// discoverKernel finds the kernel, its types and symbols from guest memory.
func discoverKernel(mem *physMem, regs []VCPURegisters, cache *KernelCache, profile *SymbolProfile) (*kernel, error) {
	levels := pagingLevels(regs)
	m, runs, err := kernelRoot(mem, regs, levels)
	if err != nil {
		return nil, err
	}
	k := &kernel{mmu: m, levels: levels, image: runs}
	v := vmem{m}
	k.types, k.btfHash, k.btfVA, k.btfSize, err = findBTF(v, runs, cache)
	if err != nil {
		return nil, fmt.Errorf("kernel types: %w", err)
	}
	syms, tables, symErr := findSymbols(v, runs, cache)
	switch {
	case symErr == nil:
		k.syms, k.kallsyms, k.symbolSource = syms, tables, "kallsyms"
	case profile != nil:
		text, err := profileSlide(v, runs, profile)
		if err != nil {
			return nil, fmt.Errorf("kernel symbols: kallsyms: %v; System.map: %w", symErr, err)
		}
		k.syms, k.symbolSource = kernelSymbols{symTable: profile.table, text: text}, "System.map"
	default:
		return nil, fmt.Errorf("kernel symbols: %w (supply a System.map profile)", symErr)
	}
	if !k.types.hasPercpuCurrent {
		// The types may be shared with other guests: change a copy.
		t := *k.types
		k.types = &t
		if off, ok := k.syms.sym("current_task"); ok && k.syms.data["current_task"].abs {
			k.types.percpuCurrent, k.types.hasPercpuCurrent = off, true
		}
	}
	if k.perCPU, err = perCPUOffsets(v, k.syms); err != nil {
		return nil, fmt.Errorf("per-CPU areas: %w", err)
	}
	return k, nil
}
