//go:build linux && amd64

package kernel

import (
	"bytes"
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

			moreProcs(t)
			boostAutogroup(t)
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
				// Nice -20 so that other work on this shared machine
				// does not squeeze the threads out.
				if err := unix.Setpriority(unix.PRIO_PROCESS, w.th.tid, -20); err != nil {
					t.Logf("renice thread %d: %v (overlap may be small on a busy machine)", w.th.tid, err)
				}
			}

			// A loaded machine may leave the threads too little time
			// to be sure they ran at once: then the window proves
			// nothing about the lower bound and is measured again.
			const attempts = 6
			for attempt := 1; ; attempt++ {
				forced := measurePinned(t, l, wantSMT, a1, b1, a2)
				if t.Failed() || forced >= minForcedOverlap {
					break
				}
				if attempt == attempts {
					t.Fatalf("in %d windows the machine never let a1 and b1 run long enough to force them to overlap %v (last: %v); nothing proven", attempts, minForcedOverlap, forced)
				}
				t.Logf("window %d: a1 and b1 were starved (forced overlap %v < %v): measuring again", attempt, forced, minForcedOverlap)
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

// minForcedOverlap is how long two threads' own run times must force them
// to have run at once before a measurement window proves the lower bound.
const minForcedOverlap = 50 * time.Millisecond

// lowerBound is the least overlap the sched_switch program must report when
// the threads' run times force forced: 80% of it (the program's switch
// times come from the runqueue clock, updated at the switch but at times
// skipped by the scheduler) less 1ms (the meter reads the threads' clocks
// a few microseconds apart, in every slice).
func lowerBound(forced time.Duration) time.Duration {
	return max(forced*8/10-time.Millisecond, 0)
}

// measurePinned spins the pinned threads for a second and checks what the
// sched_switch program measured against the bounds their run times force.
// It returns the forced (lower-bound) overlap of a1 and b1.
func measurePinned(t *testing.T, l *Loader, wantSMT bool, a1, b1, a2 *pinnedThread) time.Duration {
	t.Helper()
	if _, err := l.ReadCoScheduling(); err != nil {
		t.Fatal(err)
	}
	m := startRunMeter(t, []int{a1.tid, b1.tid, a2.tid}, 10*time.Millisecond)
	var stop atomic.Bool
	for _, th := range []*pinnedThread{a1, b1, a2} {
		th.goDo(func() { spinUntil(&stop) })
	}
	time.Sleep(time.Second)
	stop.Store(true)
	// Park each thread: the switch-out accounts the last overlap.
	for _, th := range []*pinnedThread{a1, b1, a2} {
		th.do(func() {})
	}
	m.finish()
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
	runA, runB, wall := m.ran(a1.tid), m.ran(b1.tid), m.wall()
	forced := m.forcedOverlap(a1.tid, b1.tid)
	t.Logf("a1 ran %v, b1 ran %v, wall %v: they ran at once for at least %v", runA, runB, wall, forced)
	p, ok := findPair(pairs, a1.tid, b1.tid)
	if !ok {
		if lowerBound(forced) > 0 {
			t.Errorf("no co-scheduling reported for a1 (CPU 0) and b1 (CPU 1), which ran at once for at least %v", forced)
		}
		return forced
	}
	// Two threads overlap at least the forced time, and at most as long
	// as either ran (slack: a switch-out may account a little before the
	// meter's first read).
	lower := lowerBound(forced)
	upper := min(runA, runB) + 5*time.Millisecond
	if p.LLC < lower || p.LLC > upper {
		t.Errorf("LLC overlap %v, want between %v and %v", p.LLC, lower, upper)
	}
	if forced >= minForcedOverlap && p.LLC <= 0 {
		t.Errorf("LLC overlap %v, want above zero", p.LLC)
	}
	if wantSMT {
		if p.SMT != p.LLC {
			t.Errorf("SMT overlap %v, want it equal to the LLC overlap %v on SMT siblings", p.SMT, p.LLC)
		}
	} else if p.SMT != 0 {
		t.Errorf("SMT overlap %v between CPUs that are not siblings", p.SMT)
	}
	// a2 and b1 share CPU 1: never at the same time, but handing it over
	// to each other.
	if q, ok := findPair(pairs, a2.tid, b1.tid); ok && (q.LLC != 0 || q.SMT != 0) {
		t.Errorf("threads on one CPU reported running at once: %+v", q)
	}
	return forced
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
//
// Each guest's vCPU threads are pinned to one CPU of their own (as
// KubeVirt's dedicated CPU placement pins vCPUs), the victim's to CPU 0
// and the attacker's to CPU 1, at nice -20: then threads of one guest
// never run at once, and whenever the machine lets both guests run in the
// same slice of time they must have run at once for the part of it their
// run times overlap. Four unpinned threads on two CPUs force nothing: the
// scheduler may (and under load does) run each guest's two vCPUs together
// and alternate the guests.
func TestCoSchedulingQEMUGuests(t *testing.T) {
	needCPUs(t, 2)
	boostAutogroup(t)
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
	cpuOf := map[string]int{"kernel-test/victim": 0, "kernel-test/attacker": 1}
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
			var set unix.CPUSet
			set.Set(cpuOf[vmi])
			if err := unix.SchedSetaffinity(tid, &set); err != nil {
				t.Fatalf("pin %s thread %d to CPU %d: %v", vmi, tid, cpuOf[vmi], err)
			}
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, -20); err != nil {
				t.Logf("renice thread %d: %v (overlap may be small on a busy machine)", tid, err)
			}
			t.Logf("watching %s thread %d %q on CPU %d", vmi, tid, comm, cpuOf[vmi])
		}
	}
	// A loaded machine may leave the vCPU threads too little time to be
	// sure threads of the two guests ran at once: then the window proves
	// nothing about the lower bound and is measured again.
	const attempts = 5
	for attempt := 1; ; attempt++ {
		forced := measureGuests(t, l, guests, vmiOf)
		if t.Failed() || forced >= minForcedOverlap {
			break
		}
		if attempt == attempts {
			t.Fatalf("in %d windows the machine never let the guests' vCPU threads run long enough to force them to overlap %v (last: %v); nothing proven", attempts, minForcedOverlap, forced)
		}
		t.Logf("window %d: the vCPU threads were starved (forced overlap %v < %v): measuring again", attempt, forced, minForcedOverlap)
	}
}

// measureGuests lets the guests run for three seconds and checks the pairs
// the sched_switch program reports against the bounds the vCPU threads' run
// times force. It returns the forced cross-VMI overlap.
//
// The window is closed at both ends by stopping the guests (SIGSTOP): the
// program accounts a stretch of running when a thread is switched out, and
// a busy vCPU at nice -20 runs for hundreds of milliseconds at a stretch,
// so a window cut while the threads run would count a stretch begun before
// it or leave out one still running.
func measureGuests(t *testing.T, l *Loader, guests []*guest.Guest, vmiOf map[int]string) time.Duration {
	t.Helper()
	var tids []int
	for tid := range vmiOf {
		tids = append(tids, tid)
	}
	slices.Sort(tids)
	stopGuests(t, guests, tids, unix.SIGSTOP)
	if _, err := l.ReadCoScheduling(); err != nil {
		t.Fatal(err)
	}
	m := startRunMeter(t, tids, 10*time.Millisecond)
	stopGuests(t, guests, tids, unix.SIGCONT)
	time.Sleep(3 * time.Second)
	stopGuests(t, guests, tids, unix.SIGSTOP)
	m.finish()
	pairs, err := l.ReadCoScheduling()
	stopGuests(t, guests, tids, unix.SIGCONT)
	if err != nil {
		t.Fatal(err)
	}
	wall := m.wall()
	for _, tid := range tids {
		t.Logf("thread %d (%s) ran %v of %v", tid, vmiOf[tid], m.ran(tid), wall)
	}
	var cross time.Duration
	for _, p := range pairs {
		t.Logf("pair %d(%s) %d(%s): smt=%v llc=%v handovers=%d", p.A.TID, p.A.VMI, p.B.TID, p.B.VMI, p.SMT, p.LLC, p.Handovers)
		if p.A.VMI == p.B.VMI || p.A.VMI == "" || p.B.VMI == "" {
			t.Errorf("bad pair: %+v", p)
		}
		if vmiOf[p.A.TID] != p.A.VMI || vmiOf[p.B.TID] != p.B.VMI {
			t.Errorf("pair attributed to the wrong VMIs: %+v (registered %v)", p, vmiOf)
		}
		// Slack: the program's switch times come from the runqueue
		// clock, the meter's from the thread's task clock.
		if upper := min(m.ran(p.A.TID), m.ran(p.B.TID)) + 5*time.Millisecond; p.LLC > upper {
			t.Errorf("pair %d/%d co-ran %v, more than either ran (%v)", p.A.TID, p.B.TID, p.LLC, upper)
		}
		cross += p.LLC
	}
	// The victim's vCPUs take turns on CPU 0, the attacker's on CPU 1,
	// which share an LLC: some vCPU of each ran at once at least as long
	// as their run times force, slice by slice.
	var victim, attacker []int
	for _, tid := range tids {
		if vmiOf[tid] == "kernel-test/victim" {
			victim = append(victim, tid)
		} else {
			attacker = append(attacker, tid)
		}
	}
	forced := m.forcedOverlapGroups(victim, attacker)
	// And at most as long as either guest ran (one vCPU at a time each).
	var ranV, ranA time.Duration
	for _, tid := range victim {
		ranV += m.ran(tid)
	}
	for _, tid := range attacker {
		ranA += m.ran(tid)
	}
	if upper := min(ranV, ranA) + 5*time.Millisecond; cross > upper {
		t.Errorf("vCPUs of the two guests co-ran %v, more than either guest ran (%v)", cross, upper)
	}
	t.Logf("vCPUs of different guests co-ran %v; their run times force at least %v", cross, forced)
	if cross < lowerBound(forced) || (forced >= minForcedOverlap && cross <= 0) {
		t.Errorf("vCPUs of the two guests co-ran %v on CPUs sharing an LLC, want at least %v (80%% of the %v their run times force, less 1ms)", cross, lowerBound(forced), forced)
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
	return forced
}

// stopGuests sends sig (SIGSTOP or SIGCONT) to the guests' QEMU processes
// and waits until every vCPU thread has stopped, or left the stopped state.
func stopGuests(t *testing.T, guests []*guest.Guest, tids []int, sig unix.Signal) {
	t.Helper()
	for _, g := range guests {
		if err := unix.Kill(g.PID, sig); err != nil {
			t.Fatalf("signal %v to QEMU %d: %v", sig, g.PID, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, tid := range tids {
		for {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", tid))
			if err != nil {
				t.Fatal(err)
			}
			// The state follows the parenthesised comm.
			state := byte('?')
			if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
				state = b[i+2]
			}
			if (sig == unix.SIGSTOP) == (state == 'T' || state == 't') {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("thread %d in state %c after %v", tid, state, sig)
			}
			time.Sleep(time.Millisecond)
		}
	}
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
	// a/b takes the table's one slot first. On a loaded machine other
	// threads may run between a and b on CPU 0 (no handover then), so
	// ping-pong until the pair is in the table.
	inTable := false
	for try := 0; try < 10 && !inTable; try++ {
		pingPong(t, a, b, 200)
		pairs, err := l.ReadCoScheduling()
		if err != nil {
			t.Fatal(err)
		}
		_, inTable = findPair(pairs, a.tid, b.tid)
	}
	if !inTable {
		t.Fatal("a/b never took a CPU over from each other in 2,000 round trips on one CPU")
	}
	pingPong(t, a, c, 200)
	pairs, err := l.ReadCoScheduling()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := findPair(pairs, a.tid, c.tid); ok {
		t.Errorf("pairs %+v: a/c got in although the table holds one pair, a/b's", pairs)
	}
	stats, err := l.ReadStats()
	if err != nil {
		t.Fatal(err)
	}
	if stats.PairTableFull == 0 {
		t.Errorf("stats %+v: the dropped pair a/c is not counted", stats)
	}
}
