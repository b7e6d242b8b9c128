package introspect

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Kernel symbols from the kernel's own kallsyms tables in guest memory, found
// without symbols: scripts/kallsyms emits, in .rodata,
//
//	kallsyms_num_syms, kallsyms_names, kallsyms_markers,
//	kallsyms_token_table, kallsyms_token_index
//
// plus kallsyms_offsets and kallsyms_relative_base, which come before
// kallsyms_num_syms up to Linux 6.3 and after kallsyms_token_index from 6.4,
// where 6.15 also makes the offsets relative to their own address. The token
// table is found by its content (the single-character tokens "0".."9" sit
// next to each other, as every digit occurs in some symbol name) and the
// other tables by their structure; each candidate is checked by decoding.
// Linux 6.2 and 6.3 put kallsyms_seqs_of_names between the markers and the
// token table and are not supported (a System.map profile works there).

// memReader reads virtual memory of the guest kernel.
type memReader interface {
	read(p []byte, va uint64) error
}

// symbol kinds the resolver keeps.
const (
	maxKallsyms   = 4 << 20  // symbols
	maxNamesBytes = 64 << 20 // kallsyms_names
	maxSymLen     = 0x3fff
)

// wantedSymbols are the data symbols introspection uses.
var wantedSymbols = []string{
	"init_task", "__per_cpu_offset", "nr_cpu_ids", "page_offset_base",
	"vmemmap_base", "special_mapping_vmops", "linux_banner", "current_task",
	"pcpu_hot", "_text", "_stext", "_etext", "__start_BTF", "__stop_BTF", "modules",
}

func isWanted(name string) bool {
	for _, w := range wantedSymbols {
		if w == name {
			return true
		}
	}
	return false
}

// symTable is a kernel build's symbol table: text symbols for address lookup
// plus the few data symbols introspection needs. Addresses are kept relative
// to _text, so guests running the same build share one table whatever their
// KASLR slide.
type symTable struct {
	offs   []uint32 // text symbol address - _text, sorted
	nameAt []uint32 // name i is blob[nameAt[i]:nameAt[i+1]]
	blob   []byte
	data   map[string]dataSym
	// Text range relative to _text.
	textStart, textEnd uint64
}

type dataSym struct {
	v   uint64 // offset from _text, or the absolute value
	abs bool   // per-CPU symbols are absolute offsets into a CPU's area
}

// bytes is the memory the table holds.
func (t *symTable) bytes() int64 {
	if t == nil {
		return 0
	}
	return int64(len(t.offs))*4 + int64(len(t.nameAt))*4 + int64(len(t.blob)) + int64(len(t.data))*64
}

// kernelSymbols is one guest's view of a symbol table: the table and where
// this guest's kernel put _text.
type kernelSymbols struct {
	*symTable
	text uint64
}

// lookup returns the text symbol containing addr and the offset into it.
func (k kernelSymbols) lookup(addr uint64) (string, uint64, bool) {
	if k.symTable == nil || addr < k.text {
		return "", 0, false
	}
	rel := addr - k.text
	if rel < k.textStart || rel >= k.textEnd || rel > 1<<32 {
		return "", 0, false
	}
	r := uint32(rel)
	i := sort.Search(len(k.offs), func(i int) bool { return k.offs[i] > r }) - 1
	if i < 0 {
		return "", 0, false
	}
	return string(k.blob[k.nameAt[i]:k.nameAt[i+1]]), uint64(r - k.offs[i]), true
}

// sym returns a data symbol's address (or absolute value).
func (k kernelSymbols) sym(name string) (uint64, bool) {
	if k.symTable == nil {
		return 0, false
	}
	d, ok := k.data[name]
	if !ok {
		return 0, false
	}
	if d.abs {
		return d.v, true
	}
	return k.text + d.v, true
}

// symBuilder collects decoded symbols.
type symBuilder struct {
	addrs []uint64
	names []string
	data  map[string]uint64
	abs   map[string]bool
}

func (b *symBuilder) add(typ byte, name string, addr uint64, abs bool) {
	if isWanted(name) {
		if _, dup := b.data[name]; !dup {
			b.data[name] = addr
			b.abs[name] = abs
		}
	}
	switch typ {
	case 't', 'T', 'w', 'W':
		if !abs {
			b.addrs = append(b.addrs, addr)
			b.names = append(b.names, name)
		}
	}
}

// build sorts the text symbols and makes everything relative to _text.
func (b *symBuilder) build() (*symTable, uint64, error) {
	text, ok := b.data["_text"]
	if !ok {
		text, ok = b.data["_stext"]
	}
	if !ok || len(b.addrs) == 0 {
		return nil, 0, errors.New("kallsyms: no _text symbol or no text symbols")
	}
	idx := make([]int, len(b.addrs))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(x, y int) bool { return b.addrs[idx[x]] < b.addrs[idx[y]] })
	t := &symTable{data: map[string]dataSym{}}
	size := 0
	for _, n := range b.names {
		size += len(n)
	}
	t.blob = make([]byte, 0, size)
	for _, j := range idx {
		a := b.addrs[j]
		if a < text || a-text >= 1<<32 {
			continue // outside the image: not ours to resolve
		}
		t.offs = append(t.offs, uint32(a-text))
		t.nameAt = append(t.nameAt, uint32(len(t.blob)))
		t.blob = append(t.blob, b.names[j]...)
	}
	t.nameAt = append(t.nameAt, uint32(len(t.blob)))
	if len(t.offs) == 0 {
		return nil, 0, errors.New("kallsyms: no text symbol inside the kernel image")
	}
	for name, v := range b.data {
		if b.abs[name] {
			t.data[name] = dataSym{v: v, abs: true}
		} else if v >= text {
			t.data[name] = dataSym{v: v - text}
		}
	}
	t.textStart = uint64(t.offs[0])
	if s, ok := t.data["_stext"]; ok && !s.abs {
		t.textStart = s.v
	}
	t.textEnd = uint64(t.offs[len(t.offs)-1]) + 1
	if e, ok := t.data["_etext"]; ok && !e.abs && e.v > t.textStart {
		t.textEnd = e.v
	}
	return t, text, nil
}

// kallsymsTables is where the tables were found.
type kallsymsTables struct {
	numSyms    uint32
	names      uint64 // va of kallsyms_names
	namesLen   uint64
	markers    uint64
	tokenTable uint64
	tokenIndex uint64
	offsets    uint64
	layout     string // "pre-6.4", "6.4", "pc-relative"
	relBase    uint64
}

var digitTokens = []byte("0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00")

func align8(v uint64) uint64 { return (v + 7) &^ 7 }

// findKallsyms locates and decodes the kallsyms tables given a candidate
// address of the digit tokens inside the token table. text bounds the
// kernel image for validating decoded addresses.
func findKallsyms(r memReader, digits uint64, image []mapping) (kernelSymbols, *kallsymsTables, error) {
	t := &kallsymsTables{}
	// The token index follows the token table within a few KiB.
	var idx [256]uint16
	var raw [512]byte
	found := false
	for cand := align8(digits); cand < digits+64<<10; cand += 8 {
		if err := r.read(raw[:], cand); err != nil {
			break
		}
		for i := range idx {
			idx[i] = le16(raw[2*i:])
		}
		if idx[0] != 0 || uint64(idx['0']) > digits || idx['1'] != idx['0']+2 || idx['9'] != idx['0']+18 {
			continue
		}
		ok := true
		for i := 1; i < 256; i++ {
			if idx[i] <= idx[i-1] {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		start := digits - uint64(idx['0'])
		if start&7 != 0 || start+uint64(idx[255]) >= cand {
			continue
		}
		t.tokenTable, t.tokenIndex = start, cand
		found = true
		break
	}
	if !found {
		return kernelSymbols{}, nil, errors.New("kallsyms: no token index after the token table")
	}
	tableLen := t.tokenIndex - t.tokenTable
	if tableLen > 64<<10 {
		return kernelSymbols{}, nil, errors.New("kallsyms: token table too large")
	}
	table := make([]byte, tableLen)
	if err := r.read(table, t.tokenTable); err != nil {
		return kernelSymbols{}, nil, fmt.Errorf("kallsyms: token table: %w", err)
	}
	var tokens [256][]byte
	for i := 0; i < 256; i++ {
		s := uint64(idx[i])
		e := bytes.IndexByte(table[s:], 0)
		if e < 0 || (i < 255 && s+uint64(e)+1 != uint64(idx[i+1])) {
			return kernelSymbols{}, nil, errors.New("kallsyms: token table and index disagree")
		}
		tokens[i] = table[s : s+uint64(e)]
		for _, c := range tokens[i] {
			if c < 0x20 || c > 0x7e {
				return kernelSymbols{}, nil, errors.New("kallsyms: token table holds non-printable bytes")
			}
		}
	}

	// The markers end right before the token table, or before
	// kallsyms_seqs_of_names (3 bytes a symbol; 4 in 6.2-6.3) where that
	// sits between them (6.2-6.3, and 6.1 stable kernels that took the
	// backport). Candidates are checked by decoding the names before them.
	cands, err := markerCandidates(r, t.tokenTable)
	if err != nil {
		return kernelSymbols{}, nil, err
	}
	var names []byte
	var markers []uint32
	for _, c := range cands {
		nb, n, at, ok := namesBefore(r, c.at, c.markers)
		if !ok || !c.fits(uint64(n)) {
			continue
		}
		t.numSyms, t.names, t.namesLen, t.markers = n, at, uint64(len(nb)), c.at
		names, markers = nb, c.markers
		break
	}
	if names == nil {
		return kernelSymbols{}, nil, errors.New("kallsyms: no kallsyms_names and markers before the token table")
	}
	_ = markers

	// Offsets: try each known placement and keep the one whose addresses
	// are sorted and fall inside the kernel image.
	n := uint64(t.numSyms)
	offs := make([]byte, 4*n)
	inImage := func(a uint64) bool {
		for _, m := range image {
			if a >= m.va && a-m.va < m.size {
				return true
			}
		}
		return false
	}
	type placement struct {
		name    string
		offsets uint64
		base    uint64 // va of relative_base, 0 for pc-relative
	}
	numSymsVA := t.names - 8
	placements := []placement{
		{"pre-6.4", numSymsVA - 8 - align8(4*n), numSymsVA - 8},
		{"6.4", align8(t.tokenIndex + 512), align8(t.tokenIndex+512) + align8(4*n)},
		{"pc-relative", align8(t.tokenIndex + 512), 0},
	}
	var syms kernelSymbols
	var lastErr error
	for _, pl := range placements {
		if err := r.read(offs, pl.offsets); err != nil {
			lastErr = err
			continue
		}
		var base uint64
		if pl.base != 0 {
			var b [8]byte
			if err := r.read(b[:], pl.base); err != nil {
				lastErr = err
				continue
			}
			base = le64(b[:])
		}
		tab, text, err := decodeSymbols(names, n, &tokens, offs, pl.offsets, base, pl.base == 0, inImage)
		if err != nil {
			lastErr = fmt.Errorf("%s layout: %w", pl.name, err)
			continue
		}
		t.offsets, t.layout, t.relBase = pl.offsets, pl.name, base
		syms = kernelSymbols{symTable: tab, text: text}
		break
	}
	if syms.symTable == nil {
		return kernelSymbols{}, nil, fmt.Errorf("kallsyms: no valid address table: %w", lastErr)
	}
	return syms, t, nil
}

// markerCandidate is a possible kallsyms_markers table.
type markerCandidate struct {
	at      uint64
	markers []uint32
	gap     uint64 // bytes between the markers' end (aligned) and the token table
}

// fits reports whether n symbols explain the gap: nothing, or a seqs table
// of 3 or 4 bytes a symbol.
func (c markerCandidate) fits(n uint64) bool {
	if (n+255)/256 != uint64(len(c.markers)) {
		return false
	}
	return c.gap == 0 || c.gap == align8(3*n) || c.gap == align8(4*n)
}

// markerCandidates scans backwards from the token table for u32 tables that
// start with 0 and increase, and whose end leaves a gap a seqs table could
// fill.
func markerCandidates(r memReader, tokenTable uint64) ([]markerCandidate, error) {
	// 1 MiB covers a seqs table of 300,000 symbols (a distribution kernel
	// has ~100,000); look further only when that finds nothing.
	out, err := markerCandidatesIn(r, tokenTable, 1<<20)
	if err != nil {
		return markerCandidatesIn(r, tokenTable, 8<<20)
	}
	return out, nil
}

func markerCandidatesIn(r memReader, tokenTable, window uint64) ([]markerCandidate, error) {
	lo, buf := readBack(r, tokenTable, window)
	var out []markerCandidate
	at := func(va uint64) uint32 { return le32(buf[va-lo:]) }
	for s := tokenTable - 8; s >= lo && s+8 > lo; s -= 8 {
		if at(s) != 0 {
			continue
		}
		ms := []uint32{0}
		for p := s + 4; p+4 <= tokenTable; p += 4 {
			gap := tokenTable - align8(p)
			nm := uint64(len(ms))
			lowN, highN := 256*(nm-1)+1, 256*nm
			if gap == 0 || (gap >= align8(3*lowN) && gap <= align8(3*highN)) || (gap >= align8(4*lowN) && gap <= align8(4*highN)) {
				out = append(out, markerCandidate{at: s, markers: append([]uint32(nil), ms...), gap: gap})
				if len(out) > 64 {
					return out, nil
				}
			}
			v := at(p)
			if v <= ms[len(ms)-1] || v-ms[len(ms)-1] > 256*(maxSymLen+2) {
				break
			}
			ms = append(ms, v)
			if len(ms) > maxKallsyms/256 {
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("kallsyms: no marker table before the token table")
	}
	return out, nil
}

// readBack reads up to max bytes of contiguous readable memory that end at
// end (8-aligned), in chunks going backwards until a read fails.
func readBack(r memReader, end, max uint64) (uint64, []byte) {
	const chunk = 64 << 10
	var chunks [][]byte
	lo := end
	for end-lo < max && lo >= chunk {
		c := make([]byte, chunk)
		if r.read(c, lo-chunk) != nil {
			break
		}
		chunks = append(chunks, c)
		lo -= chunk
	}
	buf := make([]byte, 0, end-lo)
	for i := len(chunks) - 1; i >= 0; i-- {
		buf = append(buf, chunks[i]...)
	}
	return lo, buf
}

// namesBefore finds kallsyms_names ending right before markers at mAt: the
// 8-aligned start whose preceding u32 (kallsyms_num_syms) counts as many
// symbols as the markers index, and from which the names decode to the
// marker offsets.
func namesBefore(r memReader, mAt uint64, markers []uint32) ([]byte, uint32, uint64, bool) {
	nm := uint64(len(markers))
	last := uint64(markers[nm-1])
	if last > maxNamesBytes || last+16 >= mAt {
		return nil, 0, 0, false
	}
	// The last 256 names take at most 256 entries of KSYM_NAME_LEN (512)
	// plus a two-byte length.
	lo, buf := readBack(r, mAt, last+256*514+16)
	for p := (mAt - last - 1) &^ 7; p >= lo+8 && p < mAt; p -= 8 {
		n := le32(buf[p-8-lo:])
		if n == 0 || (uint64(n)+255)/256 != nm || n > maxKallsyms {
			continue
		}
		if end, ok := checkNames(buf[p-lo:], n, markers); ok {
			return buf[p-lo : p-lo+end], n, p, true
		}
	}
	return nil, 0, 0, false
}

// checkNames verifies that n compressed names start at the marker offsets
// and returns where they end.
func checkNames(buf []byte, n uint32, markers []uint32) (uint64, bool) {
	var off uint64
	for i := uint32(0); i < n; i++ {
		if i&0xff == 0 && uint64(markers[i>>8]) != off {
			return 0, false
		}
		l, hdr, ok := symLen(buf, off)
		if !ok || l == 0 {
			return 0, false
		}
		off += hdr + l
		if off > uint64(len(buf)) {
			return 0, false
		}
	}
	// Only alignment padding may follow.
	if uint64(len(buf))-off > 8 {
		return 0, false
	}
	return off, true
}

// symLen decodes an entry's length: one byte, or two (ULEB128) from 6.1.
func symLen(buf []byte, off uint64) (l, hdr uint64, ok bool) {
	if off >= uint64(len(buf)) {
		return 0, 0, false
	}
	b := buf[off]
	if b&0x80 == 0 {
		return uint64(b), 1, true
	}
	if off+1 >= uint64(len(buf)) {
		return 0, 0, false
	}
	return uint64(b&0x7f) | uint64(buf[off+1])<<7, 2, true
}

// decodeSymbols expands every name and computes its address.
func decodeSymbols(names []byte, n uint64, tokens *[256][]byte, offs []byte, offsetsVA, base uint64, pcRel bool, inImage func(uint64) bool) (*symTable, uint64, error) {
	// Absolute per-CPU mode (x86-64 SMP up to 6.14) stores per-CPU symbols
	// as non-negative absolute values and the rest as negative offsets.
	absPercpu := false
	if !pcRel {
		for i := uint64(0); i < n; i++ {
			if int32(le32(offs[4*i:])) < 0 {
				absPercpu = true
				break
			}
		}
	}
	addrOf := func(i uint64) uint64 {
		v := int32(le32(offs[4*i:]))
		switch {
		case pcRel:
			return offsetsVA + 4*i + uint64(int64(v))
		case absPercpu && v >= 0:
			return uint64(v)
		case absPercpu:
			return base - 1 - uint64(int64(v))
		default:
			return base + uint64(uint32(v))
		}
	}
	b := &symBuilder{data: map[string]uint64{}, abs: map[string]bool{}}
	var sb strings.Builder
	var off uint64
	var prev uint64
	for i := uint64(0); i < n; i++ {
		l, hdr, ok := symLen(names, off)
		if !ok || off+hdr+l > uint64(len(names)) || l > maxSymLen {
			return nil, 0, errors.New("names table truncated")
		}
		sb.Reset()
		for _, tok := range names[off+hdr : off+hdr+l] {
			sb.Write(tokens[tok])
			if sb.Len() > 1024 {
				return nil, 0, errors.New("symbol name too long")
			}
		}
		off += hdr + l
		s := sb.String()
		if len(s) < 2 {
			return nil, 0, errors.New("empty symbol name")
		}
		addr := addrOf(i)
		typ := s[0]
		// Text symbols are sorted by address and lie in the image.
		if typ == 't' || typ == 'T' {
			if addr < prev || !inImage(addr) {
				return nil, 0, fmt.Errorf("text symbol %s at %#x out of order or outside the kernel image", s[1:], addr)
			}
			prev = addr
		}
		abs := absPercpu && int32(le32(offs[4*i:])) >= 0
		b.add(typ, s[1:], addr, abs)
	}
	return b.build()
}
