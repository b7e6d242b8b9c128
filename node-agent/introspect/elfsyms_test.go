package introspect

import (
	"bytes"
	"debug/elf"
	"os"
	"testing"
)

// The host's own libraries are ELF files like the guest's.
const hostLibc = "/lib/x86_64-linux-gnu/libc.so.6"

func TestELFSymbols(t *testing.T) {
	data, err := os.ReadFile(hostLibc)
	if err != nil {
		t.Skipf("no %s to parse: %v", hostLibc, err)
	}
	ref, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := ref.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	var malloc elf.Symbol
	for _, s := range dyn {
		if s.Name == "malloc" {
			malloc = s
		}
	}
	var off uint64
	for _, p := range ref.Progs {
		if p.Type == elf.PT_LOAD && malloc.Value >= p.Vaddr && malloc.Value < p.Vaddr+p.Filesz {
			off = malloc.Value - p.Vaddr + p.Off
		}
	}
	// With section headers (a stripped libc has .dynsym), and without them:
	// only what the loader maps, found through PT_DYNAMIC and DT_GNU_HASH.
	noSections := append([]byte(nil), data...)
	for i := 0x28; i < 0x30; i++ {
		noSections[i] = 0
	}
	for _, tc := range []struct {
		name string
		data []byte
		src  string
	}{{"sections", data, "dynsym"}, {"dynamic", noSections, ""}} {
		t.Run(tc.name, func(t *testing.T) {
			syms, err := parseELFSymbols(bytes.NewReader(tc.data), int64(len(tc.data)), 64<<20)
			if err != nil {
				t.Fatal(err)
			}
			name, o, ok := syms.lookup(off + 3)
			// Aliases share an address; any of them names the function.
			if !ok || o != 3 || (name != "malloc" && name != "__libc_malloc") {
				t.Errorf("lookup(malloc+3) = %s+%d %v", name, o, ok)
			}
			if tc.src != "" && syms.source != tc.src {
				t.Errorf("source %q, want %q", syms.source, tc.src)
			}
		})
	}
	if _, err := parseELFSymbols(bytes.NewReader(data), int64(len(data)), 1024); err == nil {
		t.Error("parsing beyond the byte budget succeeded")
	}
}

func FuzzELFSymbols(f *testing.F) {
	if data, err := os.ReadFile(hostLibc); err == nil {
		// The headers and the dynamic symbol tables are in the first pages.
		f.Add(data[:64<<10])
	}
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		syms, err := parseELFSymbols(bytes.NewReader(data), int64(len(data)), 1<<20)
		if err == nil {
			syms.lookup(0x1000)
		}
	})
}
