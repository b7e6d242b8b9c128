package detect_test

import (
	"bytes"
	"context"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/tracegen"
)

var (
	benchOnce   sync.Once
	benchTraces map[string][]byte
)

// benchmarkTraces are two representative nodes: eight benign VMIs, and a
// covert channel among four neighbours.
func benchmarkTraces(tb testing.TB) map[string][]byte {
	benchOnce.Do(func() {
		benchTraces = map[string][]byte{}
		var vs []tracegen.VMI
		for i, k := range []tracegen.Kind{tracegen.Compiler, tracegen.Database, tracegen.VideoEncoder, tracegen.MemBandwidth, tracegen.Cron, tracegen.JavaGC, tracegen.CryptoService, tracegen.Idle} {
			vs = append(vs, tracegen.VMI{Namespace: "tenant", Name: string(k), VCPUs: 2 + i%3, Kind: k})
		}
		for name, sc := range map[string]tracegen.Scenario{
			"benign-8vmi": {Name: "bench-benign", Seed: 1, Duration: 2 * time.Minute, SamplePeriod: 10000, LockSamplePeriod: 10000, VMIs: vs},
			"covert-6vmi": {Name: "bench-covert", Seed: 2, Duration: 2 * time.Minute, SamplePeriod: 10000, LockSamplePeriod: 10000, VMIs: vs[:4],
				Attack: &tracegen.Attack{Kind: tracegen.CacheCovert, Period: 50 * time.Millisecond, Coding: tracegen.NRZ, Rate: 8e6, Onset: 30 * time.Second, Protect: "both"}},
		} {
			var buf bytes.Buffer
			if _, err := tracegen.Generate(&buf, sc); err != nil {
				tb.Fatal(err)
			}
			benchTraces[name] = buf.Bytes()
		}
	})
	return benchTraces
}

func benchConfig() detect.Config {
	cfg := detect.DefaultConfig()
	cfg.DefaultProtection = &detect.Protection{Signatures: []detect.Signature{detect.BuiltinCryptoSignature()}}
	return cfg
}

// BenchmarkAnalyze measures sidewatch analyze's path: parse + detect.
func BenchmarkAnalyze(b *testing.B) {
	for _, name := range []string{"benign-8vmi", "covert-6vmi"} {
		data := benchmarkTraces(b)[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			var rows int64
			cpu0 := cpuTime()
			for b.Loop() {
				sum, err := detect.Replay(context.Background(), bytes.NewReader(data), benchConfig(), detect.ReplayOptions{})
				if err != nil {
					b.Fatal(err)
				}
				rows = sum.Rows
				b.ReportMetric(float64(sum.State.PerStream), "B/vcpu")
				b.ReportMetric(float64(sum.State.PerVMI), "B/vmi")
			}
			b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			// The machine may be shared: rows per second of CPU the
			// process used is the per-core throughput.
			b.ReportMetric(float64(rows)*float64(b.N)/(cpuTime()-cpu0).Seconds(), "rows/cpu-s")
		})
	}
}

// cpuTime is the user+system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestObserveAllocs holds the engine to no allocation per observation in
// the steady state: after warm-up, feeding rows (including the analyses
// they trigger) allocates nothing per row on average.
func TestObserveAllocs(t *testing.T) {
	data := benchmarkTraces(t)["benign-8vmi"]
	// Decode the trace once into observations, so that only the engine is
	// measured.
	eng, obs := decodeForAllocs(t, data)
	warm := len(obs) / 3
	for _, o := range obs[:warm] {
		eng.Observe(o)
	}
	i := warm
	allocs := testing.AllocsPerRun(len(obs)-warm-1, func() {
		eng.Observe(obs[i])
		i++
	})
	if allocs != 0 {
		t.Errorf("got %v allocations per observation, want 0", allocs)
	}
	// Stricter: count every allocation over the rest of the trace, the
	// analyses included.
	eng2, obs2 := decodeForAllocs(t, data)
	for _, o := range obs2[:warm] {
		eng2.Observe(o)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for _, o := range obs2[warm:] {
		eng2.Observe(o)
	}
	runtime.ReadMemStats(&m1)
	n := m1.Mallocs - m0.Mallocs
	t.Logf("%d allocations over %d observations and %d analyses", n, len(obs2)-warm, eng2.Stats().Analyses)
	if per := float64(n) / float64(len(obs2)-warm); per > 0.001 {
		t.Errorf("got %.4f allocations per observation including analyses, want at most 0.001", per)
	}
}
