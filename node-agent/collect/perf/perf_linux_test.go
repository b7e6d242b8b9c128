//go:build linux

package perf_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"

	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/collect/perf"
)

// busyThread spins on its own OS thread until stop is closed; the thread
// then exits (the goroutine ends while locked to it).
func busyThread(t *testing.T) (tid int, stop func()) {
	t.Helper()
	tids := make(chan int)
	done := make(chan struct{})
	var once sync.Once
	go func() {
		runtime.LockOSThread()
		tids <- unix.Gettid()
		x := 0
		for {
			select {
			case <-done:
				return
			default:
			}
			for i := 0; i < 10000; i++ {
				x += i
			}
			if x == 42 {
				runtime.Gosched()
			}
		}
	}()
	return <-tids, func() { once.Do(func() { close(done) }) }
}

// sink records what the collector delivers.
type sink struct {
	mu       sync.Mutex
	readings []collect.Reading
	samples  []collect.Sample
	lost     uint64
	branches int
}

func (s *sink) Reading(r *collect.Reading) {
	s.mu.Lock()
	s.readings = append(s.readings, *r)
	s.mu.Unlock()
}
func (s *sink) Sample(x *collect.Sample) {
	s.mu.Lock()
	s.samples = append(s.samples, *x)
	s.mu.Unlock()
}
func (s *sink) Branches(collect.StreamID, int64, []collect.Branch) {
	s.mu.Lock()
	s.branches++
	s.mu.Unlock()
}
func (s *sink) Lost(_ collect.StreamID, n uint64) { s.mu.Lock(); s.lost += n; s.mu.Unlock() }

func (s *sink) snapshot() ([]collect.Reading, []collect.Sample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]collect.Reading(nil), s.readings...), append([]collect.Sample(nil), s.samples...)
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func softwareConfig(sampleFirst bool) collect.Config {
	evs := perf.Software()
	evs[0].Sample = sampleFirst
	return collect.Config{
		Interval:     50 * time.Millisecond,
		Events:       evs,
		SamplePeriod: 1_000_000, // task_clock counts ns: one sample per ms of CPU
		GuestOnly:    true,
	}
}

func start(t *testing.T, c *perf.Collector, s collect.Sink) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Start(ctx, s) }()
	return func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Start: %v", err)
		}
	}
}

func TestSoftwareEventsOnAThread(t *testing.T) {
	tid, stopBusy := busyThread(t)
	defer stopBusy()
	c := perf.New(testr.New(t))
	defer c.Close()
	if err := c.Configure(softwareConfig(true)); err != nil {
		t.Fatal(err)
	}
	stream := collect.StreamID{Namespace: "ns", VMI: "busy", VCPU: 0}
	if err := c.SetThreads([]collect.Thread{{Stream: stream, PID: os.Getpid(), TID: tid}}); err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	if st.Threads != 1 || st.PerfFDs != 4 || st.Groups != 1 {
		t.Fatalf("after SetThreads: %+v, want 1 thread, 4 fds in 1 group", st)
	}
	var s sink
	cpu0 := threadCPU(t, tid)
	stop := start(t, c, &s)
	time.Sleep(600 * time.Millisecond)
	stop()
	cpuDelta := threadCPU(t, tid) - cpu0

	readings, samples := s.snapshot()
	if len(readings) < 5 {
		t.Fatalf("%d readings in 600ms at 50ms, want at least 5", len(readings))
	}
	var cpuNS uint64
	for _, r := range readings {
		if r.Stream != stream || len(r.Events) != 4 || r.Events[0] != "task_clock" {
			t.Fatalf("reading %+v", r)
		}
		if !r.Has(0) || !r.Has(1) || !r.Has(2) || !r.Has(3) {
			t.Fatalf("reading misses values: valid=%b", r.Valid)
		}
		if r.Duration <= 0 {
			t.Errorf("reading duration %d", r.Duration)
		}
		cpuNS += r.Values[0]
		// task_clock cannot exceed the interval's wall time by much.
		if r.Values[0] > uint64(r.Duration)+uint64(5*time.Millisecond) {
			t.Errorf("task_clock %d ns in an interval of %d ns", r.Values[0], r.Duration)
		}
	}
	// task_clock is the thread's CPU time: it agrees with the scheduler's
	// own account (/proc/<pid>/task/<tid>/schedstat) over the same span,
	// less the part before the first reading (the baseline).
	if cpuNS == 0 || cpuNS > cpuDelta+uint64(5*time.Millisecond) || cpuNS < cpuDelta/2 {
		t.Errorf("task_clock total %v, scheduler says the thread ran %v", time.Duration(cpuNS), time.Duration(cpuDelta))
	}
	// One sample per ms of CPU time.
	if want := int(cpuNS/uint64(time.Millisecond)) / 2; len(samples) < want || len(samples) == 0 {
		t.Fatalf("%d samples for %v of CPU, want at least %d", len(samples), time.Duration(cpuNS), want)
	}
	for i, x := range samples {
		if int(x.TID) != tid || x.Event != "task_clock" || x.IP == 0 {
			t.Fatalf("sample %d = %+v, want tid %d, event task_clock, an IP", i, x, tid)
		}
		if x.Mode.Guest() {
			t.Fatalf("sample %d of a host thread says guest mode", i)
		}
		if d := time.Since(time.Unix(0, x.Time)); d < 0 || d > 5*time.Second {
			t.Fatalf("sample time %v is not a recent wall time", time.Unix(0, x.Time))
		}
	}
	for i := 1; i < len(samples); i++ {
		if samples[i].Time < samples[i-1].Time {
			t.Fatalf("samples out of order at %d", i)
		}
	}
	if st := c.Stats(); st.Samples != uint64(len(samples)) || st.Lost != 0 {
		t.Errorf("stats %+v, delivered %d samples", st, len(samples))
	}
}

// threadCPU is the time a thread ran, from the scheduler.
func threadCPU(t *testing.T, tid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	if err != nil {
		t.Fatal(err)
	}
	var ns uint64
	if _, err := fmt.Sscan(string(b), &ns); err != nil {
		t.Fatal(err)
	}
	return ns
}

func hasPMU() bool {
	_, err := os.Stat("/sys/bus/event_source/devices/cpu")
	return err == nil
}

func TestHardwareEventsReportedUnavailable(t *testing.T) {
	tid, stopBusy := busyThread(t)
	defer stopBusy()
	c := perf.New(testr.New(t))
	defer c.Close()
	cfg := softwareConfig(false)
	cfg.Events = append([]collect.Event{
		{Name: "instructions", Type: perf.TypeHardware, Config: perf.HWInstructions, Sample: true},
	}, cfg.Events...)
	cfg.SamplePeriod = 100000
	if err := c.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.SetThreads([]collect.Thread{{Stream: collect.StreamID{Namespace: "ns", VMI: "v"}, TID: tid}}); err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	reason, unavailable := st.Unavailable["instructions"]
	if hasPMU() {
		t.Logf("this machine has a PMU; instructions: unavailable=%v %s", unavailable, reason)
		return
	}
	if !unavailable || !strings.Contains(reason, "ENOENT") || !strings.Contains(reason, "no hardware counters") {
		t.Fatalf("instructions: unavailable=%v reason=%q, want ENOENT / no hardware counters", unavailable, reason)
	}
	// The software events still count, in a group of their own.
	if st.PerfFDs != 4 || st.Groups != 1 {
		t.Fatalf("stats %+v, want the 4 software events open", st)
	}
	var s sink
	stop := start(t, c, &s)
	time.Sleep(200 * time.Millisecond)
	stop()
	readings, _ := s.snapshot()
	if len(readings) == 0 || readings[0].Has(0) || !readings[0].Has(1) {
		t.Fatalf("readings %+v: want slot 0 (instructions) unknown, slot 1 (task_clock) measured", readings)
	}
}

func TestBranchStackFallsBackToIPSamples(t *testing.T) {
	tid, stopBusy := busyThread(t)
	defer stopBusy()
	c := perf.New(testr.New(t))
	defer c.Close()
	cfg := softwareConfig(true)
	cfg.BranchStack = true
	if err := c.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.SetThreads([]collect.Thread{{Stream: collect.StreamID{Namespace: "ns", VMI: "v"}, TID: tid}}); err != nil {
		t.Fatal(err)
	}
	var s sink
	stop := start(t, c, &s)
	time.Sleep(200 * time.Millisecond)
	stop()
	st := c.Stats()
	// Software events never carry branch stacks (the kernel refuses them).
	if st.BranchStack || !strings.Contains(st.BranchStackReason, "EOPNOTSUPP") {
		t.Fatalf("branch stack %v reason %q, want refused with EOPNOTSUPP", st.BranchStack, st.BranchStackReason)
	}
	if _, samples := s.snapshot(); len(samples) == 0 {
		t.Fatal("no IP samples after the branch-stack fallback")
	}
}

func TestExitedThreadIsClosed(t *testing.T) {
	before := openFDs(t)
	tid, stopBusy := busyThread(t)
	c := perf.New(testr.New(t))
	if err := c.Configure(softwareConfig(true)); err != nil {
		t.Fatal(err)
	}
	th := collect.Thread{Stream: collect.StreamID{Namespace: "ns", VMI: "v"}, TID: tid}
	if err := c.SetThreads([]collect.Thread{th}); err != nil {
		t.Fatal(err)
	}
	var s sink
	stop := start(t, c, &s)
	time.Sleep(100 * time.Millisecond)
	stopBusy() // the thread exits
	deadline := time.Now().Add(3 * time.Second)
	for c.Stats().Threads != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	st := c.Stats()
	if st.Threads != 0 || st.PerfFDs != 0 || st.ThreadsGone != 1 {
		t.Fatalf("after the thread exited: %+v, want it closed by the poller", st)
	}
	// Discovery has not caught up yet and still lists it: no reopen loop.
	if err := c.SetThreads([]collect.Thread{th}); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Threads != 0 || st.PerfFDs != 0 {
		t.Fatalf("stale thread reopened: %+v", st)
	}
	stop()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("open descriptors %d after Close, %d before", after, before)
	}
}

func TestSetThreadsAndCloseReleaseEverything(t *testing.T) {
	before := openFDs(t)
	var tids []int
	for range 3 {
		tid, stop := busyThread(t)
		defer stop()
		tids = append(tids, tid)
	}
	c := perf.New(testr.New(t))
	if err := c.Configure(softwareConfig(true)); err != nil {
		t.Fatal(err)
	}
	var threads []collect.Thread
	for i, tid := range tids {
		threads = append(threads, collect.Thread{Stream: collect.StreamID{Namespace: "ns", VMI: "v", VCPU: i}, TID: tid})
	}
	if err := c.SetThreads(threads); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Threads != 3 || st.PerfFDs != 12 {
		t.Fatalf("%+v", st)
	}
	var s sink
	stop := start(t, c, &s)
	time.Sleep(120 * time.Millisecond)
	// vCPU 1 goes away (VMI migrated out, hot-unplug): closed at once.
	if err := c.SetThreads([]collect.Thread{threads[0], threads[2]}); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Threads != 2 || st.PerfFDs != 8 {
		t.Fatalf("after removing one thread: %+v", st)
	}
	// Reconfiguring while running reopens with the new events.
	cfg := softwareConfig(false)
	cfg.Events = cfg.Events[:2]
	if err := c.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Threads != 2 || st.PerfFDs != 4 {
		t.Fatalf("after reconfiguring to 2 events: %+v", st)
	}
	time.Sleep(120 * time.Millisecond)
	stop()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.PerfFDs != 0 || st.Threads != 0 {
		t.Fatalf("after Close: %+v", st)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("open descriptors %d after Close, %d before", after, before)
	}
}

func TestVanishedThreadBeforeOpen(t *testing.T) {
	c := perf.New(testr.New(t))
	defer c.Close()
	if err := c.Configure(softwareConfig(true)); err != nil {
		t.Fatal(err)
	}
	// A TID that does not exist: ESRCH, counted as gone, not an error.
	err := c.SetThreads([]collect.Thread{{Stream: collect.StreamID{Namespace: "ns", VMI: "v"}, TID: 1 << 30}})
	if err != nil {
		t.Fatalf("SetThreads: %v", err)
	}
	if st := c.Stats(); st.Threads != 0 || st.PerfFDs != 0 || st.ThreadsGone != 1 {
		t.Fatalf("%+v", st)
	}
}

func TestProbe(t *testing.T) {
	if err := perf.New(testr.New(t)).Probe(context.Background()); err != nil {
		t.Fatalf("Probe: %v", err)
	}
}

// A ring too small for its thread's sample rate is reopened larger, up to
// its bound, when the kernel drops samples or a drain finds it more than
// half full; samples keep flowing across the reopening.
func TestRingGrowsUnderPressure(t *testing.T) {
	tid, stopBusy := busyThread(t)
	defer stopBusy()
	c := perf.New(testr.New(t))
	defer c.Close()
	cfg := softwareConfig(true)
	cfg.RingPages = 1         // 4 KiB: about a hundred records
	cfg.SamplePeriod = 10_000 // a sample per 10 µs of CPU: ~1 ms of room
	if err := c.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	stream := collect.StreamID{Namespace: "ns", VMI: "busy", VCPU: 0}
	if err := c.SetThreads([]collect.Thread{{Stream: stream, PID: os.Getpid(), TID: tid}}); err != nil {
		t.Fatal(err)
	}
	small := c.Stats().RingBytes
	var s sink
	stop := start(t, c, &s)
	// 4 KiB -> 16 KiB -> 64 KiB -> 256 KiB -> 512 KiB, the bound.
	bound := (128 + 1) * os.Getpagesize()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && c.Stats().RingBytes < bound; {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	stop()
	st := c.Stats()
	if st.RingGrowths != 4 || st.RingBytes != bound || small != 2*os.Getpagesize() || st.Threads != 1 {
		t.Fatalf("stats %+v (first ring %d bytes): want a ring of 4 KiB (+ its control page) grown four times to its 512 KiB bound", st, small)
	}
	if _, samples := s.snapshot(); len(samples) == 0 || samples[len(samples)-1].Time < time.Now().Add(-time.Second).UnixNano() {
		t.Errorf("%d samples, none after the growth", len(samples))
	}
}
