package introspect

import (
	"fmt"
	"sort"
)

// Kernel modules: the `modules` list of struct module, each with its text
// range and its own symbol table (mod->kallsyms, Elf64_Sym entries with
// absolute addresses), read when an address inside the module is resolved.

const (
	maxModules       = 4096
	maxModuleSymbols = 1 << 16
)

type kmodule struct {
	addr       uint64 // struct module
	name       string
	base, size uint64 // text range
	syms       []elfSym
	symErr     error
	loaded     bool
}

// walkModules reads the module list from the `modules` list head.
func walkModules(m kmem, t *kernelTypes, head uint64) ([]*kmodule, error) {
	next, err := m.u64(head + t.listNext)
	if err != nil {
		return nil, fmt.Errorf("modules list: %w", err)
	}
	var out []*kmodule
	seen := map[uint64]struct{}{}
	for next != head {
		if len(out) >= maxModules {
			return out, fmt.Errorf("more than %d modules: %w", maxModules, ErrLimit)
		}
		if next < kernelSpace || next < t.modList {
			return out, fmt.Errorf("module list link %#x: %w", next, ErrInconsistent)
		}
		if _, dup := seen[next]; dup {
			return out, fmt.Errorf("module list loops at %#x: %w", next, ErrInconsistent)
		}
		seen[next] = struct{}{}
		mod := next - t.modList
		var name [56]byte
		n := t.modNameLen
		if n == 0 || n > uint64(len(name)) {
			n = uint64(len(name))
		}
		if err := m.read(name[:n], mod+t.modName); err != nil {
			return out, err
		}
		base, err := m.u64(mod + t.modBase)
		if err != nil {
			return out, err
		}
		size, err := m.u32(mod + t.modTextSize)
		if err != nil {
			return out, err
		}
		if base >= kernelSpace && size > 0 && size < 1<<30 {
			out = append(out, &kmodule{addr: mod, name: cString(name[:n]), base: base, size: uint64(size)})
		}
		if next, err = m.u64(next + t.listNext); err != nil {
			return out, err
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].base < out[j].base })
	return out, nil
}

// moduleAt returns the module whose text holds addr.
func moduleAt(mods []*kmodule, addr uint64) *kmodule {
	i := sort.Search(len(mods), func(i int) bool { return mods[i].base+mods[i].size > addr })
	if i < len(mods) && mods[i].base <= addr {
		return mods[i]
	}
	return nil
}

// loadSymbols reads a module's own symbol table once.
func (k *kmodule) loadSymbols(m kmem, t *kernelTypes) {
	if k.loaded {
		return
	}
	k.loaded = true
	mks, err := m.u64(k.addr + t.modKallsyms)
	if err != nil || mks < kernelSpace {
		k.symErr = fmt.Errorf("module %s: no symbol table", k.name)
		return
	}
	symtab, err1 := m.u64(mks + t.mksSymtab)
	num, err2 := m.u32(mks + t.mksNum)
	strtab, err3 := m.u64(mks + t.mksStrtab)
	if err1 != nil || err2 != nil || err3 != nil || num > maxModuleSymbols {
		k.symErr = fmt.Errorf("module %s: symbol table unreadable or too large (%d): %w", k.name, num, ErrInconsistent)
		return
	}
	raw := make([]byte, uint64(num)*elfSymSize)
	if err := m.read(raw, symtab); err != nil {
		k.symErr = fmt.Errorf("module %s: symbols: %w", k.name, err)
		return
	}
	for i := uint64(0); i < uint64(num); i++ {
		s := raw[i*elfSymSize:]
		nameOff, shndx := uint64(le32(s)), le16(s[6:])
		value, size := le64(s[8:]), le64(s[16:])
		if shndx == 0 || value < k.base || value >= k.base+k.size || nameOff == 0 || nameOff > 1<<24 {
			continue
		}
		name, err := readCString(m, strtab+nameOff, 128)
		if err != nil || name == "" {
			continue
		}
		k.syms = append(k.syms, elfSym{value: value, size: size, name: name})
	}
	sort.Slice(k.syms, func(i, j int) bool { return k.syms[i].value < k.syms[j].value })
}

// lookup returns the module symbol holding addr.
func (k *kmodule) lookup(addr uint64) (string, uint64, bool) {
	i := sort.Search(len(k.syms), func(i int) bool { return k.syms[i].value > addr }) - 1
	if i < 0 {
		return "", 0, false
	}
	s := k.syms[i]
	if s.size != 0 && addr-s.value >= s.size {
		return "", 0, false
	}
	return s.name, addr - s.value, true
}
