package introspect

import (
	"context"
	"debug/elf"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/internal/guest"
)

// Benchmarks run on a saved snapshot of the test guest in its "crowd" role
// (200 sleeping, dynamically linked processes besides the usual ones), so
// that they measure introspection, not a guest. The snapshot is made once
// (a guest boot, ~30 s) and kept in the cache directory.

func benchCacheDir() string {
	if d := os.Getenv("SIDEWATCH_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "sidewatch")
	}
	return filepath.Join(os.TempDir(), "sidewatch")
}

type crowdSnapshot struct {
	dir   string
	truth guest.GroundTruth
	lib   string // the built libvictim.so
}

var (
	crowdOnce sync.Once
	crowd     crowdSnapshot
	crowdErr  error
)

// crowdGuest returns the crowd snapshot, booting the guest to make it when
// the cache has none for the current guest build.
func crowdGuest(tb testing.TB) crowdSnapshot {
	crowdOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		art, err := guest.Build(ctx, "")
		if err != nil {
			crowdErr = err
			return
		}
		dir := filepath.Join(benchCacheDir(), "introspect-bench", filepath.Base(art.Dir)+"-crowd")
		crowd = crowdSnapshot{dir: dir, lib: art.LibVictim}
		if b, err := os.ReadFile(filepath.Join(dir, "console")); err == nil {
			if crowd.truth, err = guest.ParseGroundTruth(string(b)); err == nil {
				return
			}
		}
		g, err := guest.Start(ctx, guest.Config{Namespace: "bench", Name: "crowd", Role: "crowd", MemoryMiB: 512, BootTimeout: 4 * time.Minute})
		if err != nil {
			crowdErr = err
			return
		}
		defer g.Stop()
		tmp := dir + ".tmp"
		os.RemoveAll(tmp)
		if err := SaveSnapshot(ctx, Source{MemoryFile: g.MemoryFile, QMPSocket: g.QMPSocket}, tmp, true); err != nil {
			crowdErr = err
			return
		}
		if err := os.WriteFile(filepath.Join(tmp, "console"), []byte(g.Console()), 0o644); err != nil {
			crowdErr = err
			return
		}
		os.RemoveAll(dir)
		if crowdErr = os.Rename(tmp, dir); crowdErr == nil {
			crowd.truth = g.Truth
		}
	})
	if crowdErr != nil {
		tb.Fatal(crowdErr)
	}
	return crowd
}

func openCrowd(tb testing.TB, opts Options) *Guest {
	c := crowdGuest(tb)
	src, err := LoadSnapshot(c.dir)
	if err != nil {
		tb.Fatal(err)
	}
	g, err := Open(context.Background(), src, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { g.Close() })
	return g
}

// TestCrowdSnapshot checks the snapshot the benchmarks use: 200+ processes,
// every one's memory map read, the same answers as from the live guest.
func TestCrowdSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a QEMU guest unless the snapshot is cached")
	}
	c := crowdGuest(t)
	g := openCrowd(t, Options{})
	ctx := context.Background()
	procs, err := g.Processes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	idlers := 0
	for _, p := range procs {
		if p.Comm != "idler" {
			continue
		}
		idlers++
		maps, err := g.Maps(ctx, p.PID)
		if err != nil {
			t.Fatal(err)
		}
		lib := false
		for _, m := range maps {
			lib = lib || m.Path == "/lib/libvictim.so"
		}
		if !lib {
			t.Errorf("idler %d does not map libvictim.so", p.PID)
		}
	}
	if idlers < 200 || len(procs) < 250 {
		t.Errorf("%d processes, %d idlers; want a crowd of 200", len(procs), idlers)
	}
	maps, err := g.Maps(ctx, c.truth.VictimPID)
	if err != nil || len(maps) != len(c.truth.VictimMaps) {
		t.Errorf("victim maps: %d lines, %v; want %d", len(maps), err, len(c.truth.VictimMaps))
	}
	st := g.Stats()
	t.Logf("%d processes, %d mappings, refresh %v, %d bytes per guest, %d shared kernel bytes", st.Processes, st.Mappings, st.LastRefresh, st.MemoryBytes, st.SharedKernelBytes)
}

// libOffset is the file offset of victim_modexp in the built library.
func libOffset(tb testing.TB, lib string) uint64 {
	f, err := elf.Open(lib)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range syms {
		for _, p := range f.Progs {
			if s.Name == "victim_modexp" && p.Type == elf.PT_LOAD && s.Value >= p.Vaddr && s.Value < p.Vaddr+p.Filesz {
				return s.Value - p.Vaddr + p.Off
			}
		}
	}
	tb.Fatal("no victim_modexp in libvictim.so")
	return 0
}

// libAddress is where victim_modexp+0x10 is in a process with these maps.
func libAddress(maps []Mapping, fileOff uint64) (uint64, bool) {
	for _, m := range maps {
		if m.Path == "/lib/libvictim.so" && fileOff >= m.Offset && fileOff-m.Offset < m.End-m.Start {
			return m.Start + fileOff - m.Offset + 0x10, true
		}
	}
	return 0, false
}

var sinkAttribution Attribution

// BenchmarkResolveWarm is the agent's hot path: a sampled RIP of a process
// whose maps and library symbols were read before.
func BenchmarkResolveWarm(b *testing.B) {
	g := openCrowd(b, Options{MaxAge: time.Hour})
	ctx := context.Background()
	off := libOffset(b, crowd.lib)
	procs, err := g.Processes(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var byPID Query
	for _, p := range procs {
		if p.Comm == "idler" {
			maps, _ := g.Maps(ctx, p.PID)
			if addr, ok := libAddress(maps, off); ok {
				byPID = Query{Address: addr, PID: p.PID, VCPU: -1}
				break
			}
		}
	}
	// The busy victim runs on one of the vCPUs in the snapshot.
	vcpus, err := g.VCPUs(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name string
		q    Query
	}{{"user-by-pid", byPID}, {"kernel", Query{Address: g.Kernel().Text + 0x100, VCPU: 0}}}
	for _, v := range vcpus {
		if v.PID != crowd.truth.VictimPID {
			continue
		}
		maps, _ := g.Maps(ctx, v.PID)
		addr, _ := libAddress(maps, off)
		cases = append(cases,
			struct {
				name string
				q    Query
			}{"user-by-vcpu-observed", Query{Address: addr, VCPU: v.Index, At: v.At}},
			struct {
				name string
				q    Query
			}{"user-by-vcpu-now", Query{Address: addr, VCPU: v.Index}})
		break
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			a, err := g.Resolve(ctx, bc.q)
			if err != nil {
				b.Fatal(err)
			}
			if !a.Kernel && a.Symbol != "victim_modexp" {
				b.Fatalf("resolved to %+v", a)
			}
			b.ReportAllocs()
			for b.Loop() {
				sinkAttribution, _ = g.Resolve(ctx, bc.q)
			}
		})
	}
}

// BenchmarkRefresh re-reads the process list and every memory map of the
// 200-process guest: what the agent pays when its snapshot expires.
func BenchmarkRefresh(b *testing.B) {
	g := openCrowd(b, Options{})
	ctx := context.Background()
	if err := g.Refresh(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := g.Refresh(ctx); err != nil {
			b.Fatal(err)
		}
	}
	st := g.Stats()
	b.ReportMetric(float64(st.Processes), "processes")
	b.ReportMetric(float64(st.Mappings), "mappings")
	b.ReportMetric(float64(st.MemoryBytes), "guest-bytes")
	b.ReportMetric(float64(st.SharedKernelBytes), "kernel-bytes")
}

// BenchmarkOpen is attaching to a guest: finding the kernel, BTF and
// kallsyms in its memory, without and with a kernel cache shared with
// another guest of the same build.
func BenchmarkOpen(b *testing.B) {
	c := crowdGuest(b)
	src, err := LoadSnapshot(c.dir)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name  string
		cache *KernelCache
	}{{"cold", nil}, {"shared-cache", &KernelCache{}}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				g, err := Open(context.Background(), src, Options{Cache: bc.cache})
				if err != nil {
					b.Fatal(err)
				}
				g.Close()
			}
		})
	}
}
