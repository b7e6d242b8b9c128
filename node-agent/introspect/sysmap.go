package introspect

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ParseSystemMap reads a kernel's System.map ("ffffffff81000000 T _text"
// lines), the symbol profile used when kallsyms cannot be found in guest
// memory. Link-time addresses are fine: the KASLR slide is found at run time.
func ParseSystemMap(r io.Reader) (*SymbolProfile, error) {
	b := &symBuilder{data: map[string]uint64{}, abs: map[string]bool{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) < 3 || len(f[1]) != 1 {
			continue
		}
		addr, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("System.map line %d: bad address %q", line, f[0])
		}
		// Per-CPU symbols sit at small absolute offsets on x86-64.
		abs := addr < kernelImageStart && (f[1] == "A" || f[1] == "D" || f[1] == "d" || f[1] == "B" || f[1] == "b")
		b.add(f[1][0], f[2], addr, abs)
		if len(b.addrs) > maxKallsyms {
			return nil, errors.New("System.map: too many symbols")
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("System.map: %w", err)
	}
	t, text, err := b.build()
	if err != nil {
		return nil, fmt.Errorf("System.map: %w", err)
	}
	return &SymbolProfile{table: t, linkText: text}, nil
}

// SymbolProfile is a kernel symbol table supplied by the user.
type SymbolProfile struct {
	table    *symTable
	linkText uint64
}

var bannerPrefix = []byte("Linux version ")

// profileSlide finds where the running kernel put _text, by looking for the
// kernel banner at linux_banner moved by each possible KASLR slide (2 MiB
// steps inside the image window).
func profileSlide(v vmem, runs []mapping, p *SymbolProfile) (uint64, error) {
	banner, ok := p.table.data["linux_banner"]
	if !ok || banner.abs {
		return 0, errors.New("System.map has no linux_banner")
	}
	buf := make([]byte, len(bannerPrefix))
	for text := uint64(kernelImageStart); text < kernelImageEnd; text += 2 * mib {
		if v.read(buf, text+banner.v) == nil && bytes.Equal(buf, bannerPrefix) {
			return text, nil
		}
	}
	return 0, errors.New("the kernel banner is at no KASLR slide of this System.map: wrong kernel build?")
}
