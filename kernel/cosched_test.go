//go:build linux && amd64

package kernel

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sidewatch/sidewatch/internal/guest"
)

func needCPUs(t *testing.T, n int) {
	t.Helper()
	if runtime.NumCPU() < n {
		t.Skipf("skipped: needs %d CPUs to run threads at the same time, this machine has %d", n, runtime.NumCPU())
	}
}

// findPair returns the pair of threads a and b.
func findPair(pairs []CoSchedule, a, b int) (CoSchedule, bool) {
	for _, p := range pairs {
		if (p.A.TID == a && p.B.TID == b) || (p.A.TID == b && p.B.TID == a) {
			return p, true
		}
	}
	return CoSchedule{}, false
}

// TestCoSchedulingPinnedThreads runs busy threads of two VMIs pinned to
// CPUs 0 and 1 and checks the overlap the sched_switch program measured:
// under the real sysfs topology, and under one that makes CPUs 0 and 1 SMT
// siblings. Threads of the same VMI are never paired.
func TestCoSchedulingPinnedThreads(t *testing.T) {
	needCPUs(t, 2)
	real, err := ReadTopology("/sys")
	if err != nil {
		t.Fatal(err)
	}
	smt := Topology{CPUs: []CPU{{ID: 0, Siblings: []int{0, 1}, LLC: []int{0, 1}}, {ID: 1, Siblings: []int{0, 1}, LLC: []int{0, 1}}}}
	for _, c := range []struct {
		name     string
		topology Topology
	}{
		{"sysfs topology", real},
		{"CPUs 0 and 1 as SMT siblings", smt},
	} {
		t.Run(c.name, func(t *testing.T) {
			topo := c.topology
			l := mustLoad(t, Options{Topology: &topo})
			var wantSMT, wantLLC bool
			for _, p := range topo.peers(0) {
				if p.cpu == 1 {
					wantSMT, wantLLC = p.kind&peerSMT != 0, p.kind&peerLLC != 0
				}
			}
			if !wantLLC {
				t.Skipf("skipped: CPUs 0 and 1 share neither a core nor an LLC here (%+v), nothing to measure", topo)
			}

			a1 := startPinned(t, 0) // VMI a on CPU 0
			b1 := startPinned(t, 1) // VMI b on CPU 1
			a2 := startPinned(t, 1) // VMI a on CPU 1, sharing it with b1
			for _, w := range []struct {
				th  *pinnedThread
				vmi string
			}{{a1, "ns/a"}, {b1, "ns/b"}, {a2, "ns/a"}} {
				if err := l.WatchThread(w.th.tid, w.vmi); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := l.ReadCoScheduling(); err != nil {
				t.Fatal(err)
			}
			run0 := map[int]time.Duration{}
			for _, th := range []*pinnedThread{a1, b1, a2} {
				run0[th.tid] = threadRuntime(t, th.tid)
			}

			// Nice -20 so that other work on this shared machine does not
			// squeeze the threads out.
			for _, th := range []*pinnedThread{a1, b1, a2} {
				if err := unix.Setpriority(unix.PRIO_PROCESS, th.tid, -20); err != nil {
					t.Logf("renice thread %d: %v (overlap may be small on a busy machine)", th.tid, err)
				}
			}
			var stop atomic.Bool
			const dur = time.Second
			start := time.Now()
			for _, th := range []*pinnedThread{a1, b1, a2} {
				th.goDo(func() { spinUntil(&stop) })
			}
			time.Sleep(dur)
			stop.Store(true)
			// Park each thread: the switch-out accounts the last overlap.
			for _, th := range []*pinnedThread{a1, b1, a2} {
				th.do(func() {})
			}
			wall := time.Since(start)
			pairs, err := l.ReadCoScheduling()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pairs {
				t.Logf("pair %d(%s) %d(%s): smt=%v llc=%v handovers=%d", p.A.TID, p.A.VMI, p.B.TID, p.B.VMI, p.SMT, p.LLC, p.Handovers)
				if p.A.VMI == p.B.VMI {
					t.Errorf("pair of one VMI reported: %+v", p)
				}
			}
			if _, ok := findPair(pairs, a1.tid, a2.tid); ok {
				t.Errorf("threads of VMI a paired")
			}
			p, ok := findPair(pairs, a1.tid, b1.tid)
			if !ok {
				t.Fatalf("no co-scheduling reported for a1 (CPU 0) and b1 (CPU 1)")
			}
			runA := threadRuntime(t, a1.tid) - run0[a1.tid]
			runB := threadRuntime(t, b1.tid) - run0[b1.tid]
			t.Logf("a1 ran %v, b1 ran %v, wall %v", runA, runB, wall)
			// Two threads that ran runA and runB within wall overlapped at
			// least runA+runB-wall, and at most min(runA, runB). (Slack:
			// the run times cover a little more than the tracked window.)
			lower := max(runA+runB-wall, 0) * 8 / 10
			upper := min(runA, runB) + 5*time.Millisecond
			if p.LLC < lower || p.LLC > upper || p.LLC <= 0 {
				t.Errorf("LLC overlap %v, want between %v and %v, and above zero", p.LLC, lower, upper)
			}
			if wantSMT {
				if p.SMT != p.LLC {
					t.Errorf("SMT overlap %v, want it equal to the LLC overlap %v on SMT siblings", p.SMT, p.LLC)
				}
			} else if p.SMT != 0 {
				t.Errorf("SMT overlap %v between CPUs that are not siblings", p.SMT)
			}
			// a2 and b1 share CPU 1: never at the same time, but handing
			// it over to each other.
			if q, ok := findPair(pairs, a2.tid, b1.tid); ok && (q.LLC != 0 || q.SMT != 0) {
				t.Errorf("threads on one CPU reported running at once: %+v", q)
			}

			// Nothing ran since: the next read is empty and the pairs
			// are evicted from the kernel map.
			if again, err := l.ReadCoScheduling(); err != nil || len(again) != 0 {
				t.Errorf("second read: %+v, %v; want nothing", again, err)
			}
			if n := countPairs(t, l); n != 0 {
				t.Errorf("%d idle pairs still in the kernel map", n)
			}
		})
	}
}

// TestCoSchedulingHandovers ping-pongs two threads of different VMIs on one
// CPU through pipes: they never run at once, but take the CPU over from
// each other every round trip.
func TestCoSchedulingHandovers(t *testing.T) {
	l := mustLoad(t, Options{})
	a := startPinned(t, 0)
	b := startPinned(t, 0)
	if err := l.WatchThread(a.tid, "ns/a"); err != nil {
		t.Fatal(err)
	}
	if err := l.WatchThread(b.tid, "ns/b"); err != nil {
		t.Fatal(err)
	}
	const rounds = 2000
	pingPong(t, a, b, rounds)
	pairs, err := l.ReadCoScheduling()
	if err != nil {
		t.Fatal(err)
	}
	p, ok := findPair(pairs, a.tid, b.tid)
	if !ok {
		t.Fatalf("no pair for the ping-pong threads: %+v", pairs)
	}
	t.Logf("%+v", p)
	if p.LLC != 0 || p.SMT != 0 {
		t.Errorf("threads on one CPU reported running at once: %+v", p)
	}
	// Each round trip hands the CPU over twice; other tasks running in
	// between do not break a handover.
	if p.Handovers < rounds || p.Handovers > 2*rounds+100 {
		t.Errorf("handovers = %d, want about %d", p.Handovers, 2*rounds)
	}
}

// pingPong bounces a byte between threads a and b, rounds times.
func pingPong(t testing.TB, a, b *pinnedThread, rounds int) {
	t.Helper()
	var ab, ba [2]int
	if err := unix.Pipe2(ab[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if err := unix.Pipe2(ba[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, fd := range []int{ab[0], ab[1], ba[0], ba[1]} {
			unix.Close(fd)
		}
	}()
	done := make(chan struct{})
	b.goDo(func() {
		defer close(done)
		buf := []byte{0}
		for range rounds {
			unix.Read(ab[0], buf)
			unix.Write(ba[1], buf)
		}
	})
	a.do(func() {
		buf := []byte{0}
		for range rounds {
			unix.Write(ab[1], buf)
			unix.Read(ba[0], buf)
		}
	})
	<-done
}

// TestCoSchedulingQEMUGuests boots two real QEMU guests (TCG) and watches
// their vCPU threads as two VMIs: their vCPUs share this machine's LLC.
func TestCoSchedulingQEMUGuests(t *testing.T) {
	needCPUs(t, 2)
	l := mustLoad(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	type result struct {
		g   *guest.Guest
		err error
	}
	results := make(chan result, 2)
	for _, cfg := range []guest.Config{
		{Namespace: "kernel-test", Name: "victim", Role: "busy", CPUs: 2},
		{Namespace: "kernel-test", Name: "attacker", Role: "attacker", CPUs: 2},
	} {
		go func() {
			g, err := guest.Start(ctx, cfg)
			results <- result{g, err}
		}()
	}
	var guests []*guest.Guest
	var errs []error
	for range 2 {
		r := <-results
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		guests = append(guests, r.g)
		t.Cleanup(func() { r.g.Stop() })
	}
	if len(errs) > 0 {
		t.Fatalf("start guests: %v", errs)
	}

	vmiOf := map[int]string{}
	for _, g := range guests {
		threads, err := g.VCPUThreads()
		if err != nil {
			t.Fatal(err)
		}
		if len(threads) != 2 {
			t.Fatalf("guest %s: %d vCPU threads (%v), want 2", g.Config.Name, len(threads), threads)
		}
		vmi := g.Config.Namespace + "/" + g.Config.Name
		for tid, comm := range threads {
			if err := l.WatchThread(tid, vmi); err != nil {
				t.Fatal(err)
			}
			vmiOf[tid] = vmi
			t.Logf("watching %s thread %d %q", vmi, tid, comm)
		}
	}
	if _, err := l.ReadCoScheduling(); err != nil {
		t.Fatal(err)
	}
	run0 := map[int]time.Duration{}
	for tid := range vmiOf {
		run0[tid] = qemuThreadRuntime(t, tid)
	}
	start := time.Now()
	time.Sleep(3 * time.Second)
	pairs, err := l.ReadCoScheduling()
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(start)
	ran := map[int]time.Duration{}
	for tid := range vmiOf {
		ran[tid] = qemuThreadRuntime(t, tid) - run0[tid]
		t.Logf("thread %d (%s) ran %v of %v", tid, vmiOf[tid], ran[tid], wall)
	}
	var cross, lower time.Duration
	for _, p := range pairs {
		t.Logf("pair %d(%s) %d(%s): smt=%v llc=%v handovers=%d", p.A.TID, p.A.VMI, p.B.TID, p.B.VMI, p.SMT, p.LLC, p.Handovers)
		if p.A.VMI == p.B.VMI || p.A.VMI == "" || p.B.VMI == "" {
			t.Errorf("bad pair: %+v", p)
		}
		if vmiOf[p.A.TID] != p.A.VMI || vmiOf[p.B.TID] != p.B.VMI {
			t.Errorf("pair attributed to the wrong VMIs: %+v (registered %v)", p, vmiOf)
		}
		if upper := min(ran[p.A.TID], ran[p.B.TID]) + 10*time.Millisecond; p.LLC > upper {
			t.Errorf("pair %d/%d co-ran %v, more than either ran (%v)", p.A.TID, p.B.TID, p.LLC, upper)
		}
		cross += p.LLC
	}
	for a := range vmiOf {
		for b := range vmiOf {
			if a < b && vmiOf[a] != vmiOf[b] {
				lower += max(ran[a]+ran[b]-wall, 0)
			}
		}
	}
	// Busy vCPUs of both guests on two CPUs sharing an LLC: they co-ran,
	// at least as much as their run times force (inclusion-exclusion).
	if cross <= 0 || cross < lower*8/10 {
		t.Errorf("vCPUs of the two guests co-ran %v on CPUs sharing an LLC, want above zero and at least %v", cross, lower*8/10)
	}
	topo := l.Topology()
	if slices.ContainsFunc(topo.CPUs, func(c CPU) bool { return len(c.Siblings) > 1 }) {
		t.Logf("this machine has SMT siblings: %+v", topo)
	} else {
		for _, p := range pairs {
			if p.SMT != 0 {
				t.Errorf("SMT overlap without SMT siblings: %+v", p)
			}
		}
	}
}

// qemuThreadRuntime is how long another process's thread has run.
func qemuThreadRuntime(t testing.TB, tid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", tid))
	if err != nil {
		t.Fatal(err)
	}
	var run int64
	if _, err := fmt.Sscan(string(b), &run); err != nil {
		t.Fatalf("parse schedstat %q: %v", b, err)
	}
	return time.Duration(run)
}

// countPairs counts the entries of the kernel's pair map.
func countPairs(t testing.TB, l *Loader) int {
	t.Helper()
	var k coschedPairKey
	var v coschedPairVal
	n := 0
	it := l.pairs.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCoSchedulingPairTableFull: with room for one pair, a second pair is
// dropped and counted, and the first is still reported.
func TestCoSchedulingPairTableFull(t *testing.T) {
	l := mustLoad(t, Options{MaxPairs: 1})
	a, b, c := startPinned(t, 0), startPinned(t, 0), startPinned(t, 0)
	for th, vmi := range map[*pinnedThread]string{a: "ns/a", b: "ns/b", c: "ns/c"} {
		if err := l.WatchThread(th.tid, vmi); err != nil {
			t.Fatal(err)
		}
	}
	pingPong(t, a, b, 200)
	pingPong(t, a, c, 200)
	pairs, err := l.ReadCoScheduling()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := findPair(pairs, a.tid, b.tid); !ok || len(pairs) != 1 {
		t.Errorf("pairs %+v, want only a/b", pairs)
	}
	stats, err := l.ReadStats()
	if err != nil {
		t.Fatal(err)
	}
	if stats.PairTableFull == 0 {
		t.Errorf("stats %+v: the dropped pair a/c is not counted", stats)
	}
}
