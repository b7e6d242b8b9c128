//go:build linux && amd64

package kernel

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pinnedThread is a goroutine locked to an OS thread pinned to one CPU.
type pinnedThread struct {
	tid  int
	cmds chan func()
	done chan struct{}
}

// startPinned starts a thread pinned to cpu; it runs the funcs sent to it.
func startPinned(t testing.TB, cpu int) *pinnedThread {
	t.Helper()
	p := &pinnedThread{cmds: make(chan func()), done: make(chan struct{})}
	ready := make(chan error)
	go func() {
		defer close(p.done)
		// Never unlocked: the thread exits with the goroutine, so its
		// affinity does not leak into the Go scheduler's other threads.
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			ready <- fmt.Errorf("pin thread to CPU %d: %w", cpu, err)
			return
		}
		p.tid = unix.Gettid()
		ready <- nil
		for f := range p.cmds {
			f()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p
}

// do runs f on the thread and waits.
func (p *pinnedThread) do(f func()) {
	done := make(chan struct{})
	p.cmds <- func() { f(); close(done) }
	<-done
}

// goDo runs f on the thread without waiting.
func (p *pinnedThread) goDo(f func()) { p.cmds <- f }

func (p *pinnedThread) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	close(p.cmds)
	<-p.done
}

// spinUntil burns CPU until stop is set, after a real sleep so the thread
// is switched out and back in (a thread already running when registered
// is tracked from its next switch-in).
func spinUntil(stop *atomic.Bool) {
	ts := unix.Timespec{Nsec: int64(time.Millisecond)}
	_ = unix.Nanosleep(&ts, nil)
	x := 0
	for !stop.Load() {
		for i := range 1000 {
			x += i
		}
	}
	sink.Add(int64(x))
}

var sink atomic.Int64

// threadRuntime is how long a thread has run on a CPU (schedstat).
func threadRuntime(t testing.TB, tid int) time.Duration {
	t.Helper()
	var run, wait, slices int64
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Sscan(string(b), &run, &wait, &slices); err != nil {
		t.Fatalf("parse schedstat %q: %v", b, err)
	}
	return time.Duration(run)
}

// openTaskClock opens a sampling task-clock event on thread tid (0: the
// caller) every period nanoseconds of its CPU time, with PERF_SAMPLE_IP.
func openTaskClock(t testing.TB, tid int, period uint64) int {
	t.Helper()
	attr := unix.PerfEventAttr{
		Type:        unix.PERF_TYPE_SOFTWARE,
		Config:      unix.PERF_COUNT_SW_TASK_CLOCK,
		Size:        uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Sample:      period,
		Sample_type: unix.PERF_SAMPLE_IP | unix.PERF_SAMPLE_TID | unix.PERF_SAMPLE_TIME,
		Wakeup:      1,
	}
	fd, err := unix.PerfEventOpen(&attr, tid, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		t.Fatalf("perf_event_open(task-clock, tid %d): %v", tid, err)
	}
	return fd
}
