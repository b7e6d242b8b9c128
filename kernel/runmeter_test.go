//go:build linux && amd64

package kernel

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// runMeter follows how long some threads run, slice by slice, from the
// kernel's own account of each thread's CPU time: a counting task-clock
// perf event per thread (exact even while the thread runs on another CPU,
// unlike /proc/<tid>/schedstat, which lags by up to a tick).
//
// Two threads that ran a and b within a slice of length L ran at the same
// time for at least a+b-L of it (inclusion-exclusion), so summing over short
// slices bounds their concurrent run time from below much more tightly than
// one bound over the whole window: it stays useful when a loaded machine
// lets the threads run only part of the time.
type runMeter struct {
	tids   []int
	fds    []int
	slice  time.Duration
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	last   []time.Duration
	lastAt time.Time
	slices []runSlice
}

// runSlice is one slice: its wall length and how long each thread ran.
type runSlice struct {
	wall time.Duration
	ran  []time.Duration
}

// startRunMeter starts measuring tids every slice until finish. The meter
// reads from its own thread at nice -20, so busy threads at the same
// priority do not starve the measurement.
func startRunMeter(t testing.TB, tids []int, slice time.Duration) *runMeter {
	t.Helper()
	m := &runMeter{tids: tids, slice: slice, stop: make(chan struct{}), done: make(chan struct{})}
	for _, tid := range tids {
		attr := unix.PerfEventAttr{
			Type:   unix.PERF_TYPE_SOFTWARE,
			Config: unix.PERF_COUNT_SW_TASK_CLOCK,
			Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		}
		fd, err := unix.PerfEventOpen(&attr, tid, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if err != nil {
			m.closeFDs()
			t.Fatalf("perf_event_open(task-clock, tid %d): %v", tid, err)
		}
		m.fds = append(m.fds, fd)
	}
	t.Cleanup(m.closeFDs)
	first, err := m.read()
	if err != nil {
		t.Fatal(err)
	}
	m.last, m.lastAt = first, time.Now()
	go m.loop()
	return m
}

func (m *runMeter) closeFDs() {
	for _, fd := range m.fds {
		unix.Close(fd)
	}
	m.fds = nil
}

func (m *runMeter) read() ([]time.Duration, error) {
	out := make([]time.Duration, len(m.fds))
	var b [8]byte
	for i, fd := range m.fds {
		if n, err := unix.Read(fd, b[:]); err != nil || n != 8 {
			return nil, fmt.Errorf("read task-clock of thread %d: %d bytes, %v", m.tids[i], n, err)
		}
		out[i] = time.Duration(binary.NativeEndian.Uint64(b[:]))
	}
	return out, nil
}

func (m *runMeter) loop() {
	defer close(m.done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), -20)
	defer unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 0)
	ts := unix.NsecToTimespec(m.slice.Nanoseconds())
	for {
		select {
		case <-m.stop:
			return
		default:
		}
		_ = unix.Nanosleep(&ts, nil)
		m.take()
	}
}

// take records the slice since the previous reading.
func (m *runMeter) take() {
	now, at := func() ([]time.Duration, time.Time) {
		v, err := m.read()
		if err != nil {
			return nil, time.Time{}
		}
		return v, time.Now()
	}()
	if now == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := runSlice{wall: at.Sub(m.lastAt), ran: make([]time.Duration, len(now))}
	for i := range now {
		s.ran[i] = now[i] - m.last[i]
	}
	m.slices = append(m.slices, s)
	m.last, m.lastAt = now, at
}

// finish stops the meter after a last reading.
func (m *runMeter) finish() {
	close(m.stop)
	<-m.done
	m.take()
}

// index returns the meter's index of tid.
func (m *runMeter) index(tid int) int {
	for i, x := range m.tids {
		if x == tid {
			return i
		}
	}
	panic(fmt.Sprintf("runMeter: thread %d not measured", tid))
}

// ran is how long tid ran in the whole window.
func (m *runMeter) ran(tid int) time.Duration {
	i := m.index(tid)
	m.mu.Lock()
	defer m.mu.Unlock()
	var d time.Duration
	for _, s := range m.slices {
		d += s.ran[i]
	}
	return d
}

// wall is the window's length.
func (m *runMeter) wall() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	var d time.Duration
	for _, s := range m.slices {
		d += s.wall
	}
	return d
}

// forcedOverlap is the least time threads a and b must have run at once:
// the sum over slices of max(ran_a + ran_b - wall, 0). Threads sharing one
// CPU never run at once; the caller only asks about threads that can.
func (m *runMeter) forcedOverlap(a, b int) time.Duration {
	i, j := m.index(a), m.index(b)
	m.mu.Lock()
	defer m.mu.Unlock()
	var d time.Duration
	for _, s := range m.slices {
		d += max(s.ran[i]+s.ran[j]-s.wall, 0)
	}
	return d
}

// boostAutogroup gives the test process's autogroup (its session; the QEMU
// guests it starts belong to it too) nice -20 until the test ends. With
// autogroups on, a thread's nice only orders it within its session: every
// other busy session on this shared machine would otherwise get an equal
// share of the CPUs, whatever our threads' nice.
func boostAutogroup(t testing.TB) {
	t.Helper()
	const path = "/proc/self/autogroup"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Logf("no autogroup (%v): thread nice values alone order the threads", err)
		return
	}
	f := strings.Fields(string(b)) // "/autogroup-161 nice 0"
	if len(f) != 3 || f[1] != "nice" {
		t.Logf("autogroup %q: not boosted", b)
		return
	}
	if err := os.WriteFile(path, []byte("-20"), 0); err != nil {
		t.Logf("autogroup nice -20: %v (the threads may be starved by other sessions)", err)
		return
	}
	t.Cleanup(func() { _ = os.WriteFile(path, []byte(f[2]), 0) })
}

// moreProcs gives the test's busy locked threads a P each, so that the
// kernel, not Go's scheduler, decides which of them run at once.
func moreProcs(t testing.TB) {
	prev := runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), 8))
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
}

// forcedOverlapGroups is the least time some thread of as and some thread
// of bs ran at once, for groups whose threads never run at once among
// themselves (each group pinned to one CPU): the sum over slices of
// max(ran_as + ran_bs - wall, 0).
func (m *runMeter) forcedOverlapGroups(as, bs []int) time.Duration {
	var ia, ib []int
	for _, tid := range as {
		ia = append(ia, m.index(tid))
	}
	for _, tid := range bs {
		ib = append(ib, m.index(tid))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var d time.Duration
	for _, s := range m.slices {
		sum := -s.wall
		for _, i := range ia {
			sum += s.ran[i]
		}
		for _, i := range ib {
			sum += s.ran[i]
		}
		d += max(sum, 0)
	}
	return d
}

// TestRunMeterBoundsOverlap checks the meter's bound on known behaviour:
// two threads spinning on different CPUs for the whole window are forced
// to overlap for nearly all of it, two threads sharing one CPU are forced
// to overlap for nothing.
func TestRunMeterBoundsOverlap(t *testing.T) {
	needCPUs(t, 2)
	moreProcs(t)
	boostAutogroup(t)
	a, b, c := startPinned(t, 0), startPinned(t, 1), startPinned(t, 1)
	m := startRunMeter(t, []int{a.tid, b.tid, c.tid}, 10*time.Millisecond)
	for _, th := range []*pinnedThread{a, b, c} {
		if err := unix.Setpriority(unix.PRIO_PROCESS, th.tid, -20); err != nil {
			t.Logf("renice thread %d: %v", th.tid, err)
		}
	}
	var stop atomic.Bool
	for _, th := range []*pinnedThread{a, b, c} {
		th.goDo(func() { spinUntil(&stop) })
	}
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	for _, th := range []*pinnedThread{a, b, c} {
		th.do(func() {})
	}
	m.finish()
	wall := m.wall()
	t.Logf("wall %v: a ran %v, b %v, c %v; forced a/b %v, b/c %v", wall, m.ran(a.tid), m.ran(b.tid), m.ran(c.tid),
		m.forcedOverlap(a.tid, b.tid), m.forcedOverlap(b.tid, c.tid))
	if ab := m.forcedOverlap(a.tid, b.tid); ab > min(m.ran(a.tid), m.ran(b.tid)) {
		t.Errorf("forced overlap %v above either run time", ab)
	}
	// b and c share CPU 1: together they ran at most the wall time in
	// every slice (plus the reads' skew).
	if bc := m.forcedOverlap(b.tid, c.tid); bc > wall/50 {
		t.Errorf("threads sharing one CPU forced to overlap %v of %v", bc, wall)
	}
	if got := m.ran(a.tid) + m.ran(b.tid) + m.ran(c.tid); got > 2*wall+wall/50 {
		t.Errorf("three threads on two CPUs ran %v in %v", got, wall)
	}
}
