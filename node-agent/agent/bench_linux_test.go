//go:build linux

package agent_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/kernel"
	"github.com/sidewatch/sidewatch/node-agent/agent"
	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/collect/perf"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
)

// The vCPU farm: this test binary re-executed as a stand-in for QEMU, so
// that the load runs in other processes and the agent's own CPU time is
// measured alone. Each farm process carries libvirt's
// `-name guest=<ns>_<vmi>,debug-threads=on` and runs threads named
// "CPU n/KVM" that are busy a given fraction of every 10 ms.
const farmEnv = "SIDEWATCH_BENCH_FARM"

func TestMain(m *testing.M) {
	if os.Getenv(farmEnv) != "" {
		farm()
		return
	}
	os.Exit(m.Run())
}

func farm() {
	vcpus, _ := strconv.Atoi(os.Getenv("FARM_VCPUS"))
	busy, _ := strconv.ParseFloat(os.Getenv("FARM_BUSY"), 64)
	for i := 0; i < vcpus; i++ {
		go func(i int) {
			runtime.LockOSThread()
			comm := fmt.Sprintf("/proc/self/task/%d/comm", unix.Gettid())
			_ = os.WriteFile(comm, []byte(fmt.Sprintf("CPU %d/KVM", i)), 0o644)
			const cycle = 10 * time.Millisecond
			on := time.Duration(busy * float64(cycle))
			x := 0
			for {
				start := time.Now()
				for time.Since(start) < on {
					for j := 0; j < 1000; j++ {
						x += j
					}
				}
				if rest := cycle - on; rest > 0 {
					time.Sleep(rest)
				}
			}
		}(i)
	}
	select {}
}

type farmProc struct{ cmd *exec.Cmd }

func startFarm(b *testing.B, ns, name string, vcpus int, busy float64) *farmProc {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-name", fmt.Sprintf("guest=%s_%s,debug-threads=on", ns, name))
	cmd.Env = append(os.Environ(), farmEnv+"=1", "FARM_VCPUS="+strconv.Itoa(vcpus), "FARM_BUSY="+strconv.FormatFloat(busy, 'f', -1, 64))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return &farmProc{cmd: cmd}
}

func (f *farmProc) stop() {
	_ = f.cmd.Process.Kill()
	_ = f.cmd.Wait()
}

// waitVCPUs waits until discovery sees n vCPU threads of the farm.
func waitVCPUs(b *testing.B, n int) {
	b.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		procs, err := discovery.Scanner{ProcRoot: "/proc"}.Scan()
		if err != nil {
			b.Fatal(err)
		}
		got := 0
		for _, p := range procs {
			if p.VMI.Namespace == "bench" {
				got += len(p.VCPUs)
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("farm: %d of %d vCPU threads visible", got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rssBytes() uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// runLoop runs the real agent loop (discovery from the real /proc, the
// perf collector, bounded buffers, the real detection engine) over the
// farm for warmup+measure and reports its CPU share and RSS over measure.
func runLoop(b *testing.B, vmis int, samplePeriod int64, sampler perf.KernelSampler, warmup, measure time.Duration) (cpuPct, rssMiB float64, st collect.Stats, samplesPerSec float64, lost, dropped uint64) {
	b.Helper()
	var world []discovery.VMI
	for i := 0; i < vmis; i++ {
		world = append(world, discovery.VMI{Ref: discovery.VMIRef{Namespace: "bench", Name: fmt.Sprintf("vm%02d", i)}})
	}
	pol := policy("bench", 0, nil, nil, func(s *v1alpha1.SideChannelPolicySpec) { s.Collection.SamplePeriod = samplePeriod })
	// Software events stand in for the four hardware counters, renamed so
	// the detection engine does its real work on them.
	evs := perf.Software()
	evs[0].Sample = true
	col := perf.New(logr.Discard())
	if sampler != nil {
		col.UseKernelSampler(sampler, "")
	}
	a, err := agent.New(agent.Options{
		Node: "bench", Log: logr.Discard(), World: newWorld([]v1alpha1.SideChannelPolicy{pol}, world...),
		ProcRoot: "/proc", Collector: col, Events: evs,
		Rename:    map[string]string{"task_clock": "cycles", "context_switches": "llc_references", "page_faults": "llc_misses", "cpu_migrations": "l1d_misses"},
		Detectors: agent.DetectFactory(logr.Discard(), nil, nil),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	time.Sleep(warmup)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	s0, c0, t0 := a.Stats(), cpuTime(), time.Now()
	time.Sleep(measure)
	s1, c1, t1 := a.Stats(), cpuTime(), time.Now()
	runtime.ReadMemStats(&m1)
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/t1.Sub(t0).Seconds(), "allocs/s")
	b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/t1.Sub(t0).Seconds()/1024, "KiB-alloc/s")
	b.ReportMetric(float64(m1.NumGC-m0.NumGC), "GCs")
	rss := rssBytes()
	st = col.Stats()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	wall := t1.Sub(t0)
	return 100 * float64(c1-c0) / float64(wall), float64(rss) / (1 << 20), st,
		float64(s1.Samples-s0.Samples) / wall.Seconds(), s1.LostSamples - s0.LostSamples, s1.DroppedSamples - s0.DroppedSamples
}

// BenchmarkAgent100VCPUs: 100 vCPU threads (25 farm processes of 4) at
// 1% busy each, 4 counters per thread in one group read every 100 ms, one
// of them sampled, through the whole agent loop with the detection
// engine. Reports the agent's CPU share of one core and its RSS.
func BenchmarkAgent100VCPUs(b *testing.B) {
	const vmis, vcpus = 25, 4
	var farms []*farmProc
	for i := 0; i < vmis; i++ {
		farms = append(farms, startFarm(b, "bench", fmt.Sprintf("vm%02d", i), vcpus, 0.01))
	}
	defer func() {
		for _, f := range farms {
			f.stop()
		}
	}()
	waitVCPUs(b, vmis*vcpus)
	for b.Loop() {
		// task_clock sampled every 1 ms of vCPU time: ~1,000 samples/s
		// over the farm's ~1 core-second per second.
		cpu, rss, st, sps, lost, dropped := runLoop(b, vmis, 1_000_000, nil, 5*time.Second, 20*time.Second)
		if st.Threads != vmis*vcpus || st.PerfFDs != 4*vmis*vcpus {
			b.Fatalf("collector watched %d threads with %d fds, want %d and %d", st.Threads, st.PerfFDs, vmis*vcpus, 4*vmis*vcpus)
		}
		b.ReportMetric(cpu, "cpu%")
		b.ReportMetric(rss, "RSS-MiB")
		// Ring pages become resident as samples reach them: at this rate
		// most are not touched yet, so the bound adds them all.
		b.ReportMetric(rss+float64(st.RingBytes)/(1<<20), "RSS+rings-MiB")
		b.ReportMetric(sps, "samples/s")
		b.ReportMetric(float64(lost), "kernel-lost")
		b.ReportMetric(float64(dropped), "buffer-dropped")
		b.ReportMetric(float64(st.PerfFDs), "perf-fds")
	}
}

// BenchmarkAgentSampleDrain: four farm vCPU threads busy 75% each, their
// task_clock sampled every 15 µs of CPU: 50,000 samples/s or more through
// the rings, the single poller, the buffers and the detection engine.
// Reports the rate drained, the samples the kernel lost (ring full) plus
// those the buffers dropped, and the agent's CPU share.
func BenchmarkAgentSampleDrain(b *testing.B) {
	b.Run("ring", func(b *testing.B) { benchSampleDrain(b, nil) })
	b.Run("kernel", func(b *testing.B) {
		l, err := kernel.Load(context.Background(), kernel.Options{})
		if err != nil {
			b.Skipf("eBPF sampler not loadable here: %v", err)
		}
		defer l.Close()
		benchSampleDrain(b, l)
	})
}

// benchSampleDrain drains the samples through rings (sampler nil) or the
// in-kernel sampler's bins.
func benchSampleDrain(b *testing.B, sampler perf.KernelSampler) {
	f := startFarm(b, "bench", "vm00", 4, 0.75)
	defer f.stop()
	waitVCPUs(b, 4)
	for b.Loop() {
		cpu, rss, st, sps, lost, dropped := runLoop(b, 1, 15_000, sampler, 3*time.Second, 10*time.Second)
		if sampler != nil && st.SampleMode != collect.SampleModeKernel {
			b.Fatalf("sample mode %q (%s), want the kernel sampler", st.SampleMode, st.SampleModeReason)
		}
		b.ReportMetric(float64(st.LostSlots), "kernel-slots-lost")
		b.ReportMetric(sps, "samples/s")
		b.ReportMetric(float64(lost), "kernel-lost")
		b.ReportMetric(float64(dropped), "buffer-dropped")
		b.ReportMetric(cpu, "cpu%")
		b.ReportMetric(rss, "RSS-MiB")
		b.ReportMetric(float64(st.Throttled), "throttled")
		b.ReportMetric(float64(st.RingGrowths), "ring-growths")
		b.ReportMetric(float64(st.RingBytes)/(1<<20), "rings-MiB")
	}
}
