package kernel

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestGeneratedObjectsFresh fails when an eBPF source changed after the
// committed objects were built: `make generate-bpf` rebuilds them and
// rewrites bpf.sum. It needs no clang.
func TestGeneratedObjectsFresh(t *testing.T) {
	f, err := os.Open("bpf.sum")
	if err != nil {
		t.Fatalf("%v: run make generate-bpf", err)
	}
	defer f.Close()
	recorded := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("bpf.sum: bad line %q", line)
		}
		recorded[name] = sum
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}

	var sources []string
	for _, pattern := range []string{"gen.go", "*.bpf.c", "include/*.h"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, m...)
	}
	for _, src := range sources {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		got := hex.EncodeToString(h[:])
		want, ok := recorded[src]
		switch {
		case !ok:
			t.Errorf("%s is not in bpf.sum: run make generate-bpf and commit the result", src)
		case got != want:
			t.Errorf("%s changed since its objects were generated: run make generate-bpf and commit the result", src)
		}
	}
	for name := range recorded {
		if !slices.Contains(sources, name) {
			t.Errorf("bpf.sum lists %s, which no longer exists: run make generate-bpf", name)
		}
	}
}
