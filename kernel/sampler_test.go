//go:build linux && amd64

package kernel

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestSamplerBinsSoftwareSamples attaches the sampler to a real sampling
// perf event (task-clock) on a busy thread and checks that every sample is
// binned by IP and time, and that none reaches the perf ring buffer unless
// PassSamples asks for it.
func TestSamplerBinsSoftwareSamples(t *testing.T) {
	for _, pass := range []bool{false, true} {
		t.Run(fmt.Sprintf("PassSamples=%v", pass), func(t *testing.T) {
			const period = 250 * time.Microsecond
			l := mustLoad(t, Options{PassSamples: pass, SampleSlot: 2 * time.Millisecond})
			th := startPinned(t, 0)
			fd, ring := openSampling(t, th.tid, uint64(period))
			const stream = 7
			if err := l.AttachSampler(fd, stream); err != nil {
				t.Fatal(err)
			}
			if err := l.AttachSampler(fd, stream); err == nil {
				t.Fatal("attaching the same perf event twice did not fail")
			}
			if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_ENABLE, 0); err != nil {
				t.Fatal(err)
			}

			var first Timeline
			var totalSlotted, totalSamples uint64
			for round := range 2 {
				run0 := threadRuntime(t, th.tid)
				spinFor(th, 400*time.Millisecond)
				ran := threadRuntime(t, th.tid) - run0
				bins, err := l.ReadSampleBins()
				if err != nil {
					t.Fatal(err)
				}
				tl := timelineOf(t, bins, th.tid, stream)
				want := uint64(ran / period)
				t.Logf("round %d: thread ran %v: %d samples (period %v: ~%d), %d slots from %v, lost %d",
					round, ran, tl.Samples, period, want, len(tl.Counts), tl.Start, tl.LostSlots)
				// One sample per period of the thread's CPU time, give or
				// take what schedstat and task-clock account differently.
				if tl.Samples == 0 || tl.Samples > want+want/20+10 || tl.Samples < want/2 {
					t.Errorf("round %d: %d samples for %v of CPU time at one per %v", round, tl.Samples, ran, period)
				}
				if tl.GuestSamples != 0 {
					t.Errorf("round %d: %d guest samples without hardware virtualisation", round, tl.GuestSamples)
				}
				var slotted uint64
				for _, n := range tl.Counts {
					slotted += uint64(n)
				}
				// Complete slots only: a slot open at a read is reported in
				// full at the next, so per read they differ by at most a
				// slot's worth and over all reads they agree.
				perSlot := uint64(2*time.Millisecond/period) + 2
				if slotted > tl.Samples+perSlot || slotted+perSlot < tl.Samples {
					t.Errorf("round %d: %d samples in slots, %d in all", round, slotted, tl.Samples)
				}
				totalSlotted += slotted
				totalSamples += tl.Samples
				if totalSlotted > totalSamples || totalSlotted+perSlot < totalSamples {
					t.Errorf("after round %d: %d samples in slots, %d in all", round, totalSlotted, totalSamples)
				}
				if tl.LostSlots != 0 {
					t.Errorf("round %d: %d slots lost between reads 400ms apart (window %v)", round, tl.LostSlots, 256*tl.Slot)
				}
				if round == 0 {
					first = tl
				} else if want := first.Start + time.Duration(len(first.Counts))*first.Slot; tl.Start != want {
					t.Errorf("second read starts at %v, want %v, where the first one stopped", tl.Start, want)
				}

				var binned, user, inText uint64
				text := executableText(t)
				for _, b := range bins.IPs {
					if b.TID != th.tid || b.Stream != stream {
						t.Errorf("bin of another thread or stream: %+v", b)
						continue
					}
					if b.Guest || b.FromRegs {
						t.Errorf("bin %+v: want a host sample with the IP perf recorded", b)
					}
					if b.Addr%64 != 0 {
						t.Errorf("bin address %#x not aligned to IPBinBytes 64", b.Addr)
					}
					binned += b.Count
					if !b.Kernel {
						user += b.Count
						if text.contains(b.Addr) {
							inText += b.Count
						}
					}
				}
				if binned != tl.Samples {
					t.Errorf("round %d: %d samples in IP bins, %d in the timeline", round, binned, tl.Samples)
				}
				// The thread spins in this test binary's code.
				if inText*2 < binned {
					t.Errorf("round %d: only %d of %d samples (%d in user space) have IPs in this executable's text %v", round, inText, binned, user, text)
				}
			}

			samples := ringSamples(t, ring)
			if pass && samples == 0 {
				t.Errorf("PassSamples: no samples in the perf ring buffer")
			}
			if !pass && samples != 0 {
				t.Errorf("%d samples reached the perf ring buffer; the sampler should drop them", samples)
			}

			if err := l.DetachSampler(fd); err != nil {
				t.Fatal(err)
			}
			spinFor(th, 100*time.Millisecond)
			bins, err := l.ReadSampleBins()
			if err != nil {
				t.Fatal(err)
			}
			for _, tl := range bins.Timelines {
				if tl.TID == th.tid && tl.Samples != 0 {
					t.Errorf("samples after DetachSampler: %+v", tl)
				}
			}
			if len(bins.IPs) != 0 {
				t.Errorf("%d IP bins after DetachSampler", len(bins.IPs))
			}
			stats, err := l.ReadStats()
			if err != nil {
				t.Fatal(err)
			}
			if stats != (Stats{}) {
				t.Errorf("stats: %+v, want nothing dropped", stats)
			}
		})
	}
}

func TestAttachSamplerRejectsNonPerfFD(t *testing.T) {
	l := mustLoad(t, Options{})
	f, err := os.Open("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := l.AttachSampler(int(f.Fd()), 1); err == nil || !strings.Contains(err.Error(), "not a perf event") {
		t.Fatalf("AttachSampler(a file) = %v, want an error saying it is not a perf event", err)
	}
	if err := l.DetachSampler(int(f.Fd())); err == nil {
		t.Fatal("DetachSampler of an fd never attached did not fail")
	}
}

// spinFor keeps th busy for d.
func spinFor(th *pinnedThread, d time.Duration) {
	var stop atomic.Bool
	th.goDo(func() { spinUntil(&stop) })
	time.Sleep(d)
	stop.Store(true)
	th.do(func() {})
}

func timelineOf(t *testing.T, bins SampleBins, tid int, stream uint16) Timeline {
	t.Helper()
	for _, tl := range bins.Timelines {
		if tl.TID == tid && tl.Stream == stream {
			return tl
		}
	}
	t.Fatalf("no timeline for thread %d stream %d in %+v", tid, stream, bins.Timelines)
	return Timeline{}
}

// openSampling opens a disabled task-clock sampling event on tid with a
// ring buffer of 8 pages.
func openSampling(t *testing.T, tid int, period uint64) (int, []byte) {
	t.Helper()
	attr := unix.PerfEventAttr{
		Type:        unix.PERF_TYPE_SOFTWARE,
		Config:      unix.PERF_COUNT_SW_TASK_CLOCK,
		Size:        uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Sample:      period,
		Sample_type: unix.PERF_SAMPLE_IP | unix.PERF_SAMPLE_TID | unix.PERF_SAMPLE_TIME,
		Bits:        unix.PerfBitDisabled,
		Wakeup:      1,
	}
	fd, err := unix.PerfEventOpen(&attr, tid, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		t.Fatalf("perf_event_open(task-clock, tid %d): %v", tid, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	ring, err := unix.Mmap(fd, 0, 9*os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap perf ring: %v", err)
	}
	t.Cleanup(func() { unix.Munmap(ring) })
	return fd, ring
}

// ringSamples counts PERF_RECORD_SAMPLE records written to a ring that
// nobody consumed (it stops at the first wrap).
func ringSamples(t *testing.T, ring []byte) int {
	t.Helper()
	const recordSample = 9
	head := atomic.LoadUint64((*uint64)(unsafe.Pointer(&ring[1024])))
	offset := binary.LittleEndian.Uint64(ring[1040:])
	size := binary.LittleEndian.Uint64(ring[1048:])
	data := ring[offset : offset+size]
	n := 0
	for pos := uint64(0); pos+8 <= min(head, size); {
		typ := binary.LittleEndian.Uint32(data[pos:])
		sz := uint64(binary.LittleEndian.Uint16(data[pos+6:]))
		if sz == 0 || pos+sz > size {
			break
		}
		if typ == recordSample {
			n++
		}
		pos += sz
	}
	return n
}

// textRange is the executable mapping of this test binary.
type textRange struct{ lo, hi uint64 }

func (r textRange) contains(a uint64) bool { return a >= r.lo && a < r.hi }

func executableText(t *testing.T) textRange {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 6 || fields[1] != "r-xp" || fields[5] != exe {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil {
			return textRange{a, b}
		}
	}
	t.Fatalf("no r-xp mapping of %s in /proc/self/maps", exe)
	return textRange{}
}
