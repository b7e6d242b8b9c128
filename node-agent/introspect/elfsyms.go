package introspect

import (
	"errors"
	"fmt"
	"io"
	"sort"
)

// A guest ELF file's own function symbols, read from guest memory: the full
// symbol table (.symtab) when the file is unstripped and its section headers
// are in memory, else the dynamic symbol table found through PT_DYNAMIC, which
// the dynamic loader always maps. A bounded parser of our own rather than
// debug/elf: the input is hostile and only a few structures are needed.

const (
	elfHeaderSize = 64
	elfPhdrSize   = 56
	elfShdrSize   = 64
	elfSymSize    = 24

	ptLoad    = 1
	ptDynamic = 2

	shtSymtab = 2
	shtDynsym = 11

	sttFunc  = 2
	sttIFunc = 10

	dtNull    = 0
	dtHash    = 4
	dtStrtab  = 5
	dtSymtab  = 6
	dtStrsz   = 10
	dtSyment  = 11
	dtGNUHash = 0x6ffffef5

	maxELFSegments = 256
	maxELFSections = 4096
	maxELFSymbols  = 1 << 20
)

// elfSymbols maps file offsets of code to function names.
type elfSymbols struct {
	loads []elfLoad // PT_LOAD segments
	syms  []elfSym  // sorted by value
	// source says which table the names came from: "symtab" or "dynsym".
	source string
	bytes  int64
}

type elfLoad struct{ off, vaddr, filesz uint64 }

type elfSym struct {
	value, size uint64
	name        string
}

// lookup returns the function containing file offset off.
func (e *elfSymbols) lookup(off uint64) (string, uint64, bool) {
	if e == nil {
		return "", 0, false
	}
	vaddr, ok := uint64(0), false
	for _, l := range e.loads {
		if off >= l.off && off-l.off < l.filesz {
			vaddr, ok = off-l.off+l.vaddr, true
			break
		}
	}
	if !ok {
		return "", 0, false
	}
	i := sort.Search(len(e.syms), func(i int) bool { return e.syms[i].value > vaddr }) - 1
	if i < 0 {
		return "", 0, false
	}
	s := e.syms[i]
	if s.size != 0 && vaddr-s.value >= s.size {
		return "", 0, false
	}
	return s.name, vaddr - s.value, true
}

type elfReader struct {
	r    io.ReaderAt
	size uint64
	// budget bounds the bytes read for tables.
	budget int64
}

func (e *elfReader) bytes(off, n uint64) ([]byte, error) {
	if n > uint64(e.budget) || off > e.size || n > e.size-off {
		return nil, fmt.Errorf("ELF table of %d bytes at %#x exceeds the file or the budget: %w", n, off, ErrLimit)
	}
	e.budget -= int64(n)
	b := make([]byte, n)
	if _, err := e.r.ReadAt(b, int64(off)); err != nil {
		return nil, err
	}
	return b, nil
}

// parseELFSymbols reads an ELF64 little-endian file's function symbols.
func parseELFSymbols(r io.ReaderAt, size int64, budget int64) (*elfSymbols, error) {
	if size < elfHeaderSize {
		return nil, errors.New("not an ELF file: too small")
	}
	e := &elfReader{r: r, size: uint64(size), budget: budget}
	h, err := e.bytes(0, elfHeaderSize)
	if err != nil {
		return nil, err
	}
	if string(h[:4]) != "\x7fELF" || h[4] != 2 || h[5] != 1 {
		return nil, errors.New("not a 64-bit little-endian ELF file")
	}
	phoff, shoff := le64(h[0x20:]), le64(h[0x28:])
	phentsize, phnum := uint64(le16(h[0x36:])), uint64(le16(h[0x38:]))
	shentsize, shnum, shstrndx := uint64(le16(h[0x3a:])), uint64(le16(h[0x3c:])), uint64(le16(h[0x3e:]))
	_ = shstrndx
	if phentsize != elfPhdrSize || phnum == 0 || phnum > maxELFSegments {
		return nil, fmt.Errorf("ELF program headers: %d of %d bytes", phnum, phentsize)
	}
	ph, err := e.bytes(phoff, phnum*phentsize)
	if err != nil {
		return nil, fmt.Errorf("ELF program headers: %w", err)
	}
	out := &elfSymbols{}
	var dyn *elfLoad
	for i := uint64(0); i < phnum; i++ {
		p := ph[i*phentsize:]
		typ := le32(p)
		l := elfLoad{off: le64(p[8:]), vaddr: le64(p[16:]), filesz: le64(p[32:])}
		switch typ {
		case ptLoad:
			out.loads = append(out.loads, l)
		case ptDynamic:
			d := l
			dyn = &d
		}
	}
	if len(out.loads) == 0 {
		return nil, errors.New("ELF file has no loadable segment")
	}
	// Section headers first: .symtab names static functions too.
	var secErr error
	if shoff != 0 && shnum != 0 {
		if shentsize != elfShdrSize || shnum > maxELFSections {
			secErr = fmt.Errorf("ELF section headers: %d of %d bytes", shnum, shentsize)
		} else if err := out.fromSections(e, shoff, shnum); err != nil {
			secErr = err
		}
	}
	if len(out.syms) == 0 && dyn != nil {
		if err := out.fromDynamic(e, *dyn); err != nil {
			return nil, errors.Join(secErr, err)
		}
	}
	if len(out.syms) == 0 {
		if secErr != nil {
			return nil, secErr
		}
		return nil, errors.New("ELF file has no function symbols")
	}
	sort.Slice(out.syms, func(i, j int) bool { return out.syms[i].value < out.syms[j].value })
	out.bytes = int64(len(out.syms))*40 + int64(len(out.loads))*24
	for _, s := range out.syms {
		out.bytes += int64(len(s.name))
	}
	return out, nil
}

func (out *elfSymbols) fromSections(e *elfReader, shoff, shnum uint64) error {
	sh, err := e.bytes(shoff, shnum*elfShdrSize)
	if err != nil {
		return fmt.Errorf("ELF section headers: %w", err)
	}
	pick := func(want uint32) (int, bool) {
		for i := uint64(0); i < shnum; i++ {
			if le32(sh[i*elfShdrSize+4:]) == want {
				return int(i), true
			}
		}
		return 0, false
	}
	for _, want := range []uint32{shtSymtab, shtDynsym} {
		i, ok := pick(want)
		if !ok {
			continue
		}
		s := sh[uint64(i)*elfShdrSize:]
		off, size, link := le64(s[0x18:]), le64(s[0x20:]), uint64(le32(s[0x28:]))
		if link >= shnum {
			return errors.New("ELF symbol table links a missing string table")
		}
		str := sh[link*elfShdrSize:]
		stroff, strsize := le64(str[0x18:]), le64(str[0x20:])
		if err := out.readSyms(e, off, size/elfSymSize, stroff, strsize); err != nil {
			return err
		}
		if len(out.syms) > 0 {
			out.source = map[uint32]string{shtSymtab: "symtab", shtDynsym: "dynsym"}[want]
			return nil
		}
	}
	return nil
}

// fileOff converts a virtual address of the file's image to a file offset.
func (out *elfSymbols) fileOff(vaddr uint64) (uint64, bool) {
	for _, l := range out.loads {
		if vaddr >= l.vaddr && vaddr-l.vaddr < l.filesz {
			return vaddr - l.vaddr + l.off, true
		}
	}
	return 0, false
}

func (out *elfSymbols) fromDynamic(e *elfReader, dyn elfLoad) error {
	if dyn.filesz > 64<<10 {
		return errors.New("ELF dynamic section too large")
	}
	d, err := e.bytes(dyn.off, dyn.filesz)
	if err != nil {
		return fmt.Errorf("ELF dynamic section: %w", err)
	}
	var symtab, strtab, strsz, hash, gnuHash uint64
	syment := uint64(elfSymSize)
	for i := 0; i+16 <= len(d); i += 16 {
		tag, val := le64(d[i:]), le64(d[i+8:])
		switch tag {
		case dtNull:
			i = len(d)
		case dtSymtab:
			symtab = val
		case dtStrtab:
			strtab = val
		case dtStrsz:
			strsz = val
		case dtSyment:
			syment = val
		case dtHash:
			hash = val
		case dtGNUHash:
			gnuHash = val
		}
	}
	if symtab == 0 || strtab == 0 || syment != elfSymSize {
		return errors.New("ELF dynamic section lacks a symbol table")
	}
	symOff, ok1 := out.fileOff(symtab)
	strOff, ok2 := out.fileOff(strtab)
	if !ok1 || !ok2 {
		return errors.New("ELF dynamic symbol table outside the loaded segments")
	}
	var count uint64
	switch {
	case hash != 0:
		off, ok := out.fileOff(hash)
		if !ok {
			return errors.New("ELF DT_HASH outside the loaded segments")
		}
		b, err := e.bytes(off, 8)
		if err != nil {
			return err
		}
		count = uint64(le32(b[4:])) // nchain
	case gnuHash != 0:
		off, ok := out.fileOff(gnuHash)
		if !ok {
			return errors.New("ELF DT_GNU_HASH outside the loaded segments")
		}
		if count, err = gnuHashCount(e, off); err != nil {
			return err
		}
	default:
		// Without a hash table the string table usually follows the
		// symbol table.
		if strtab > symtab {
			count = (strtab - symtab) / elfSymSize
		}
	}
	return out.readSyms(e, symOff, count, strOff, strsz)
}

// gnuHashCount counts dynamic symbols from a GNU hash table: one past the
// last symbol of the highest bucket's chain.
func gnuHashCount(e *elfReader, off uint64) (uint64, error) {
	h, err := e.bytes(off, 16)
	if err != nil {
		return 0, err
	}
	nbuckets, symoffset, bloomSize := uint64(le32(h)), uint64(le32(h[4:])), uint64(le32(h[8:]))
	if nbuckets == 0 || nbuckets > 1<<20 || bloomSize > 1<<20 {
		return 0, errors.New("ELF GNU hash table sizes out of range")
	}
	bucketsOff := off + 16 + 8*bloomSize
	b, err := e.bytes(bucketsOff, 4*nbuckets)
	if err != nil {
		return 0, err
	}
	var last uint64
	for i := uint64(0); i < nbuckets; i++ {
		if v := uint64(le32(b[4*i:])); v > last {
			last = v
		}
	}
	if last < symoffset {
		return symoffset, nil
	}
	chain := bucketsOff + 4*nbuckets + 4*(last-symoffset)
	for n := 0; n < maxELFSymbols; n++ {
		c, err := e.bytes(chain, 4)
		if err != nil {
			return 0, err
		}
		if le32(c)&1 != 0 {
			return last + 1, nil
		}
		last++
		chain += 4
	}
	return 0, fmt.Errorf("ELF GNU hash chain longer than %d: %w", maxELFSymbols, ErrLimit)
}

func (out *elfSymbols) readSyms(e *elfReader, off, count, stroff, strsize uint64) error {
	if count > maxELFSymbols {
		return fmt.Errorf("ELF symbol table of %d entries: %w", count, ErrLimit)
	}
	if count == 0 {
		return nil
	}
	syms, err := e.bytes(off, count*elfSymSize)
	if err != nil {
		return fmt.Errorf("ELF symbols: %w", err)
	}
	strs, err := e.bytes(stroff, strsize)
	if err != nil {
		return fmt.Errorf("ELF symbol names: %w", err)
	}
	for i := uint64(0); i < count; i++ {
		s := syms[i*elfSymSize:]
		name, info, shndx := uint64(le32(s)), s[4], le16(s[6:])
		value, size := le64(s[8:]), le64(s[16:])
		if t := info & 0xf; (t != sttFunc && t != sttIFunc) || shndx == 0 || value == 0 || name >= strsize {
			continue
		}
		end := name
		for end < strsize && strs[end] != 0 && end-name < 1024 {
			end++
		}
		out.syms = append(out.syms, elfSym{value: value, size: size, name: cString(strs[name:end])})
	}
	return nil
}
