package introspect

import (
	"encoding/binary"
	"fmt"
	"testing"
)

const testImage = 0xffffffff81000000

type testSym struct {
	typ  byte
	name string
	addr uint64
	abs  bool // per-CPU absolute
}

// testSymbols is a symbol list like a kernel's: per-CPU absolutes first,
// then text and data sorted by address, more than 256 of them.
func testSymbols() []testSym {
	syms := []testSym{{'A', "current_task", 0x1fb80, true}, {'A', "cpu_number", 0x1f000, true}}
	syms[0], syms[1] = syms[1], syms[0]
	syms = append(syms, testSym{'T', "_text", testImage, false}, testSym{'T', "_stext", testImage, false})
	for i := 0; i < 600; i++ {
		syms = append(syms, testSym{'t', fmt.Sprintf("func_%d", i), testImage + 0x1000 + uint64(i)*0x40, false})
	}
	syms = append(syms,
		testSym{'T', "t0123456789", testImage + 0x20000, false},
		testSym{'T', "_etext", testImage + 0x30000, false},
		testSym{'D', "init_task", testImage + 0x40000, false},
		testSym{'D', "__per_cpu_offset", testImage + 0x41000, false},
	)
	return syms
}

// encodeKallsyms writes kallsyms tables the way scripts/kallsyms lays them
// out, without compression (every character is its own token).
func encodeKallsyms(syms []testSym, layout string) (data []byte, digits uint64) {
	base := uint64(testImage + 0x80000)
	buf := make([]byte, 0x80000)
	pos := uint64(0)
	align := func() { pos = (pos + 7) &^ 7 }
	put32 := func(v uint32) { binary.LittleEndian.PutUint32(buf[pos:], v); pos += 4 }
	put64 := func(v uint64) { binary.LittleEndian.PutUint64(buf[pos:], v); pos += 8 }
	relBase := uint64(testImage)
	n := len(syms)
	offsets := func(pcRel bool) {
		align()
		start := pos
		for i, s := range syms {
			switch {
			case pcRel:
				put32(uint32(int32(int64(s.addr - (base + start + 4*uint64(i))))))
			case s.abs:
				put32(uint32(s.addr))
			default:
				put32(uint32(int32(int64(relBase) - int64(s.addr) - 1)))
			}
		}
		if !pcRel {
			align()
			put64(relBase)
		}
	}
	names := func() {
		align()
		put32(uint32(n))
		align()
		namesStart := pos
		var markers []uint32
		for i, s := range syms {
			if i%256 == 0 {
				markers = append(markers, uint32(pos-namesStart))
			}
			full := string(s.typ) + s.name
			buf[pos] = byte(len(full))
			pos++
			pos += uint64(copy(buf[pos:], full))
		}
		align()
		for _, m := range markers {
			put32(m)
		}
	}
	seqs := func() {
		align()
		for i := range syms {
			buf[pos], buf[pos+1], buf[pos+2] = byte(i>>16), byte(i>>8), byte(i)
			pos += 3
		}
	}
	tokens := func() {
		align()
		start := pos
		var idx [256]uint16
		for b := 0; b < 256; b++ {
			idx[b] = uint16(pos - start)
			if b >= 0x20 && b < 0x7f {
				buf[pos] = byte(b)
				pos++
			} else {
				pos += uint64(copy(buf[pos:], "zz"))
			}
			if b == '0' {
				digits = base + pos - 1
			}
			buf[pos] = 0
			pos++
		}
		align()
		for _, v := range idx {
			binary.LittleEndian.PutUint16(buf[pos:], v)
			pos += 2
		}
	}
	switch layout {
	case "pre-6.4":
		offsets(false)
		names()
		tokens()
	case "6.1-seqs":
		offsets(false)
		names()
		seqs()
		tokens()
	case "6.4":
		names()
		tokens()
		offsets(false)
		seqs()
	case "pc-relative":
		names()
		tokens()
		offsets(true)
		seqs()
	}
	return buf[:pos], digits
}

func TestKallsymsLayouts(t *testing.T) {
	syms := testSymbols()
	for _, layout := range []string{"pre-6.4", "6.1-seqs", "6.4", "pc-relative"} {
		t.Run(layout, func(t *testing.T) {
			tables, digits := encodeKallsyms(syms, layout)
			image := make([]byte, 0x80000+len(tables))
			copy(image[0x80000:], tables)
			m := &flatMem{base: testImage, data: image}
			k, found, err := findKallsyms(m, digits, []mapping{{va: testImage, size: uint64(len(image))}})
			if err != nil {
				t.Fatal(err)
			}
			wantLayout := layout
			if layout == "6.1-seqs" {
				wantLayout = "pre-6.4"
			}
			if found.layout != wantLayout || found.numSyms != uint32(len(syms)) {
				t.Errorf("found %s layout with %d symbols, want %s with %d", found.layout, found.numSyms, wantLayout, len(syms))
			}
			for _, s := range syms {
				if (s.typ == 't' || s.typ == 'T') && s.name != "_text" && s.name != "_stext" && s.name != "_etext" {
					name, off, ok := k.lookup(s.addr + 1)
					if !ok || name != s.name || off != 1 {
						t.Errorf("lookup %#x = %s+%d, want %s+1", s.addr+1, name, off, s.name)
					}
				}
			}
			for _, want := range []struct {
				name string
				addr uint64
			}{{"init_task", testImage + 0x40000}, {"_text", testImage}} {
				if got, ok := k.sym(want.name); !ok || got != want.addr {
					t.Errorf("%s = %#x, want %#x", want.name, got, want.addr)
				}
			}
			if layout != "pc-relative" {
				if got, ok := k.sym("current_task"); !ok || got != 0x1fb80 {
					t.Errorf("per-CPU current_task = %#x, want the absolute 0x1fb80", got)
				}
			}
			if _, _, ok := k.lookup(testImage + 0x30000); ok {
				t.Error("an address past _etext resolved")
			}
		})
	}
}

func FuzzKallsyms(f *testing.F) {
	for _, layout := range []string{"pre-6.4", "6.1-seqs", "6.4"} {
		tables, digits := encodeKallsyms(testSymbols(), layout)
		f.Add(tables, uint32(digits-testImage-0x80000))
	}
	f.Fuzz(func(t *testing.T, data []byte, digits uint32) {
		if len(data) > 1<<20 {
			return
		}
		// The tables sit 512 KiB into a kernel image, as encoded.
		m := &flatMem{base: testImage + 0x80000, data: data}
		image := []mapping{{va: testImage, size: 0x80000 + uint64(len(data))}}
		k, _, err := findKallsyms(m, testImage+0x80000+uint64(digits), image)
		if err == nil {
			k.lookup(testImage + 0x1234)
		}
	})
}
