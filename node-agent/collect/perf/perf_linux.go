//go:build linux

package perf

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/sidewatch/sidewatch/node-agent/collect"
)

func init() {
	collect.Register("perf", func(o collect.Options) (collect.Collector, error) { return New(o.Log), nil })
}

// fdReserve is how many descriptors the collector leaves to the rest of
// the agent (API connections, proc reads, metrics server).
const fdReserve = 128

// Collector implements collect.Collector with perf_event_open.
type Collector struct {
	log logr.Logger

	mu         sync.Mutex
	cfg        collect.Config
	configured bool
	names      []string
	threads    map[collect.StreamID]*vcpu
	byKey      map[uint64]*vcpu
	gone       map[int]bool
	// ringPages remembers grown ring sizes by thread id.
	ringPages   map[int]int
	wanted      []collect.Thread
	nextKey     uint64
	fds         int
	unavailable map[string]string
	// branch: 0 unknown, 1 works, -1 refused (branchReason says why).
	branch       int
	branchReason string

	// ks, when set, aggregates samples in the kernel (kernelbins_linux.go).
	ks kernelState

	epfd, wakefd int
	closed       bool
	running      atomic.Bool
	stopped      chan struct{}
	fdLimit      int

	samples, lost, throttled, readings, readErrs, threadsGone, refused, ringGrowths atomic.Uint64

	// poller scratch
	rec     record
	scratch []byte
	grp     collect.GroupRead
	readBuf []byte
	reading collect.Reading
	sample  collect.Sample
}

// vcpu is one watched thread: its event groups and its sample ring.
type vcpu struct {
	key    uint64
	stream collect.StreamID
	tid    int
	groups []*group
	ring   *ring
	// pollfd is the descriptor in the epoll set: the ring's, or without
	// a ring the first group leader's (it hangs up when the thread exits),
	// whose control page hup maps.
	pollfd int
	hup    []byte
	// binned are the sampling events whose samples the kernel bins.
	binned []binnedEvent
	// sampled maps a sampling event's perf id to its name.
	sampled map[uint64]string
	last    int64
	pid     int
	// lost is set when the kernel dropped samples of this thread, crowded
	// when a drain found its ring more than half full (a few hundred
	// milliseconds of delay from losing some): either way its ring is too
	// small for its rate and is reopened four times as large.
	lost, crowded bool
}

// maxRingPages bounds the adaptive growth of one thread's ring (512 KiB).
const maxRingPages = 128

type group struct {
	fds     []int
	slots   []int // event index of each member
	prevVal []uint64
	prevEn  uint64
	prevRun uint64
	primed  bool
}

type ring struct {
	fd   int
	mem  []byte
	meta *unix.PerfEventMmapPage
	data []byte
}

// New makes a collector; Configure and Start it.
func New(log logr.Logger) *Collector {
	return &Collector{
		log: log, threads: map[collect.StreamID]*vcpu{}, byKey: map[uint64]*vcpu{},
		gone: map[int]bool{}, ringPages: map[int]int{}, unavailable: map[string]string{}, epfd: -1, wakefd: -1,
		ks: kernelState{streams: map[uint16]*kstream{}},
	}
}

// Name implements collect.Collector.
func (c *Collector) Name() string { return "perf" }

// Probe opens a software counter on the calling thread: perf_event_open
// itself works (kernel support, permissions, seccomp).
func (c *Collector) Probe(context.Context) error {
	attr := unix.PerfEventAttr{Type: TypeSoftware, Config: SWTaskClock, Size: uint32(unsafe.Sizeof(unix.PerfEventAttr{}))}
	fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return collect.ErrNotSupported
		}
		return fmt.Errorf("perf_event_open: %w", err)
	}
	return unix.Close(fd)
}

// Configure implements collect.Collector. Watched threads are reopened
// with the new events.
func (c *Collector) Configure(cfg collect.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.RingPages == 0 {
		cfg.RingPages = 32
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("perf: collector closed")
	}
	c.closeAllLocked()
	c.cfg, c.configured, c.names = cfg, true, cfg.EventNames()
	c.unavailable = map[string]string{}
	c.branch, c.branchReason = 0, ""
	if !cfg.BranchStack {
		c.branch = -1
	}
	return c.applyLocked()
}

// SetThreads implements collect.Collector.
func (c *Collector) SetThreads(threads []collect.Thread) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("perf: collector closed")
	}
	c.wanted = append(c.wanted[:0], threads...)
	if !c.configured {
		return nil
	}
	return c.applyLocked()
}

// applyLocked opens the wanted threads not open yet and closes those no
// longer wanted or whose TID changed.
func (c *Collector) applyLocked() error {
	if err := c.ensurePollerLocked(); err != nil {
		return err
	}
	want := make(map[collect.StreamID]collect.Thread, len(c.wanted))
	wantTID := make(map[int]bool, len(c.wanted))
	for _, t := range c.wanted {
		want[t.Stream] = t
		wantTID[t.TID] = true
	}
	for id, v := range c.threads {
		if t, ok := want[id]; !ok || t.TID != v.tid {
			c.closeVCPULocked(v)
		}
	}
	for tid := range c.gone {
		if !wantTID[tid] {
			delete(c.gone, tid) // discovery caught up: forget it
		}
	}
	for tid := range c.ringPages {
		if !wantTID[tid] {
			delete(c.ringPages, tid)
		}
	}
	var errs []error
	for _, t := range c.wanted {
		if _, ok := c.threads[t.Stream]; ok || c.gone[t.TID] {
			continue
		}
		v, err := c.openVCPULocked(t)
		switch {
		case errors.Is(err, errThreadGone):
			c.gone[t.TID] = true
			c.threadsGone.Add(1)
		case errors.Is(err, errFDBudget):
			c.refused.Add(1)
			errs = append(errs, fmt.Errorf("%s (tid %d): %w", t.Stream, t.TID, err))
		case err != nil:
			errs = append(errs, fmt.Errorf("%s (tid %d): %w", t.Stream, t.TID, err))
		default:
			c.threads[t.Stream] = v
			c.byKey[v.key] = v
		}
	}
	return errors.Join(errs...)
}

var (
	errThreadGone = errors.New("thread exited")
	errFDBudget   = errors.New("file descriptor budget exhausted (raise RLIMIT_NOFILE)")
	errNoEvents   = errors.New("no event could be opened")
)

func (c *Collector) attr(ev collect.Event, branch bool) unix.PerfEventAttr {
	a := unix.PerfEventAttr{
		Type:        ev.Type,
		Size:        uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Config:      ev.Config,
		Ext1:        ev.Config1,
		Ext2:        ev.Config2,
		Read_format: unix.PERF_FORMAT_GROUP | unix.PERF_FORMAT_TOTAL_TIME_ENABLED | unix.PERF_FORMAT_TOTAL_TIME_RUNNING | unix.PERF_FORMAT_ID,
		// Sample times on CLOCK_MONOTONIC, convertible to wall time. Every
		// member of a group must use its leader's clock, so all do.
		Bits:    unix.PerfBitUseClockID,
		Clockid: unix.CLOCK_MONOTONIC,
	}
	if c.cfg.GuestOnly {
		// Count only while the thread runs guest code (VMX non-root /
		// SVM guest mode); on software events the kernel ignores it.
		a.Bits |= unix.PerfBitExcludeHost
	}
	if ev.Sample {
		a.Sample = c.cfg.SamplePeriod
		a.Sample_type = unix.PERF_SAMPLE_IDENTIFIER | unix.PERF_SAMPLE_IP | unix.PERF_SAMPLE_TID | unix.PERF_SAMPLE_TIME
		a.Bits |= unix.PerfBitWatermark
		// Wake the poller when an eighth of the ring holds samples: it
		// has the other seven eighths' time to drain before loss, which
		// rides out a busy node's scheduling delays.
		a.Wakeup = uint32(c.cfg.RingPages * os.Getpagesize() / 8)
		if branch {
			a.Sample_type |= unix.PERF_SAMPLE_BRANCH_STACK
			// The guest's user-mode calls and indirect jumps: what the
			// victim's code was doing when the counter overflowed.
			a.Branch_sample_type = unix.PERF_SAMPLE_BRANCH_USER | unix.PERF_SAMPLE_BRANCH_ANY_CALL | unix.PERF_SAMPLE_BRANCH_IND_JUMP
		}
	}
	return a
}

func (c *Collector) open(ev collect.Event, tid, leader int, branch bool) (int, error) {
	if c.fdLimit > 0 && c.fds >= c.fdLimit-fdReserve {
		return -1, errFDBudget
	}
	a := c.attr(ev, branch)
	fd, err := unix.PerfEventOpen(&a, tid, -1, leader, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return -1, err
	}
	c.fds++
	return fd, nil
}

func (c *Collector) closeFD(fd int) {
	if fd >= 0 {
		_ = unix.Close(fd)
		c.fds--
	}
}

// openVCPULocked opens one thread's groups. Events share a group while the
// PMU can schedule them together; when adding a member fails with EINVAL
// (the group would not fit the counters) a new group starts, and the
// kernel multiplexes the groups.
func (c *Collector) openVCPULocked(t collect.Thread) (_ *vcpu, err error) {
	v := &vcpu{key: c.nextKey, stream: t.Stream, tid: t.TID, pid: t.PID, sampled: map[uint64]string{}}
	c.nextKey++
	defer func() {
		if err != nil {
			c.releaseVCPULocked(v)
		}
	}()
	var cur *group
	for i, ev := range c.cfg.Events {
		if _, bad := c.unavailable[ev.Name]; bad {
			continue
		}
		// Samples binned in the kernel carry no branch stack: do not make
		// the PMU record one.
		branch := ev.Sample && c.branch >= 0 && !c.ks.wanted()
		leader := -1
		if cur != nil {
			leader = cur.fds[0]
		}
		fd, err := c.open(ev, t.TID, leader, branch)
		if err != nil && branch && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
			if fd2, err2 := c.open(ev, t.TID, leader, false); err2 == nil {
				if c.branch == 0 {
					c.log.Info("branch stack unavailable, sampling instruction pointers only", "event", ev.Name, "reason", errnoReason(err))
				}
				c.branch, c.branchReason = -1, fmt.Sprintf("%s: %s", ev.Name, errnoReason(err))
				fd, err = fd2, nil
			}
		}
		if err != nil && cur != nil && errors.Is(err, unix.EINVAL) {
			cur, leader = nil, -1
			fd, err = c.open(ev, t.TID, -1, ev.Sample && c.branch >= 0)
		}
		if err != nil {
			switch {
			case errors.Is(err, unix.ESRCH):
				return nil, errThreadGone
			case errors.Is(err, errFDBudget), errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
				return nil, errFDBudget
			}
			if _, seen := c.unavailable[ev.Name]; !seen {
				c.log.Info("event unavailable", "event", ev.Name, "reason", errnoReason(err))
			}
			c.unavailable[ev.Name] = errnoReason(err)
			continue
		}
		if ev.Sample && branch && c.branch == 0 {
			c.branch = 1
		}
		if cur == nil {
			cur = &group{}
			v.groups = append(v.groups, cur)
		}
		cur.fds = append(cur.fds, fd)
		cur.slots = append(cur.slots, i)
		cur.prevVal = append(cur.prevVal, 0)
		if ev.Sample {
			id, err := eventID(fd)
			if err != nil {
				return nil, fmt.Errorf("PERF_EVENT_IOC_ID: %w", err)
			}
			v.sampled[id] = ev.Name
			if !c.attachKernelLocked(v, fd, ev.Name) {
				if err := c.attachRing(v, fd); err != nil {
					return nil, err
				}
			}
		}
	}
	if len(v.groups) == 0 {
		return nil, errNoEvents
	}
	// The ring wakes the poller with samples and hangs up when the thread
	// exits. Without one (nothing sampled, or samples binned in the
	// kernel), the first group leader gets a ring of just its control page
	// (perf polls an event without a ring as hung up) to tell the exit.
	if v.ring != nil {
		v.pollfd = v.ring.fd
	} else if mem, err := unix.Mmap(v.groups[0].fds[0], 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		v.hup, v.pollfd = mem, v.groups[0].fds[0]
	}
	if v.pollfd > 0 {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(uint32(v.key)), Pad: int32(uint32(v.key >> 32))}
		if err := unix.EpollCtl(c.epfd, unix.EPOLL_CTL_ADD, v.pollfd, &ev); err != nil {
			v.pollfd = 0
			return nil, fmt.Errorf("epoll add: %w", err)
		}
	}
	return v, nil
}

// attachRing gives the thread's first sampled event a ring buffer and
// redirects the others into it.
func (c *Collector) attachRing(v *vcpu, fd int) error {
	if v.ring != nil {
		if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_SET_OUTPUT, v.ring.fd); err != nil {
			return fmt.Errorf("PERF_EVENT_IOC_SET_OUTPUT: %w", err)
		}
		return nil
	}
	page := os.Getpagesize()
	pages := max(c.cfg.RingPages, c.ringPages[v.tid])
	for {
		mem, err := unix.Mmap(fd, 0, (1+pages)*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err == nil {
			meta := (*unix.PerfEventMmapPage)(unsafe.Pointer(&mem[0]))
			off, size := uint64(page), uint64(pages*page)
			if meta.Data_offset != 0 {
				off, size = meta.Data_offset, meta.Data_size
			}
			v.ring = &ring{fd: fd, mem: mem, meta: meta, data: mem[off : off+size]}
			return nil
		}
		// Without CAP_IPC_LOCK the locked-memory budget
		// (perf_event_mlock_kb) may not fit the ring: halve it.
		if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.ENOMEM) || pages == 1 {
			return fmt.Errorf("mmap sample ring (%d pages): %w (grant CAP_IPC_LOCK or raise kernel.perf_event_mlock_kb)", pages, err)
		}
		pages /= 2
	}
}

func eventID(fd int) (uint64, error) {
	var id uint64
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(unix.PERF_EVENT_IOC_ID), uintptr(unsafe.Pointer(&id)))
	if e != 0 {
		return 0, e
	}
	return id, nil
}

// errnoReason words a perf_event_open failure for the heartbeat and logs.
func errnoReason(err error) string {
	switch {
	case errors.Is(err, unix.ENOENT):
		return "no hardware counters (perf_event_open: ENOENT, the PMU does not know this event)"
	case errors.Is(err, unix.EOPNOTSUPP):
		return "not supported by this PMU or event (perf_event_open: EOPNOTSUPP)"
	case errors.Is(err, unix.ENODEV):
		return "no such PMU (perf_event_open: ENODEV)"
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return "permission denied (perf_event_open: grant CAP_PERFMON or lower kernel.perf_event_paranoid)"
	case errors.Is(err, unix.EINVAL):
		return "invalid for this PMU (perf_event_open: EINVAL)"
	case errors.Is(err, errNoEvents):
		return err.Error()
	}
	return fmt.Sprintf("perf_event_open: %v", err)
}

func (c *Collector) closeVCPULocked(v *vcpu) {
	if v.pollfd > 0 {
		_ = unix.EpollCtl(c.epfd, unix.EPOLL_CTL_DEL, v.pollfd, nil)
		v.pollfd = 0
	}
	c.releaseVCPULocked(v)
	delete(c.threads, v.stream)
	delete(c.byKey, v.key)
}

func (c *Collector) releaseVCPULocked(v *vcpu) {
	// The eBPF link holds its own reference to the event: unlink first.
	c.detachKernelLocked(v)
	if v.hup != nil {
		_ = unix.Munmap(v.hup)
		v.hup = nil
	}
	if v.ring != nil {
		_ = unix.Munmap(v.ring.mem)
		v.ring = nil
	}
	for _, g := range v.groups {
		// Members before the leader: closing a leader first would turn
		// members into singleton groups for a moment.
		for i := len(g.fds) - 1; i >= 0; i-- {
			c.closeFD(g.fds[i])
		}
	}
	v.groups = nil
}

func (c *Collector) closeAllLocked() {
	for _, v := range c.threads {
		c.closeVCPULocked(v)
	}
}

func (c *Collector) ensurePollerLocked() error {
	if c.epfd >= 0 {
		return nil
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < 1<<31 {
		c.fdLimit = int(rl.Cur)
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1, Pad: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wakefd)
		return fmt.Errorf("epoll add eventfd: %w", err)
	}
	c.epfd, c.wakefd = epfd, wakefd
	return nil
}

const wakeKey = ^uint64(0)

// Start implements collect.Collector: the single poller loop. It reads
// every thread's groups at each interval tick and drains rings when the
// kernel signals a watermark, and always right before a tick's reads, so
// each stream's samples reach the sink before the reading whose interval
// contains them.
func (c *Collector) Start(ctx context.Context, sink collect.Sink) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("perf: collector closed")
	}
	if !c.configured {
		c.mu.Unlock()
		return errors.New("perf: Start before Configure")
	}
	if err := c.ensurePollerLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	if !c.running.CompareAndSwap(false, true) {
		c.mu.Unlock()
		return errors.New("perf: already started")
	}
	c.stopped = make(chan struct{})
	epfd := c.epfd
	c.mu.Unlock()
	defer close(c.stopped)
	defer c.running.Store(false)

	stop := context.AfterFunc(ctx, c.wake)
	defer stop()

	monoOffset := monotonicToWall()
	events := make([]unix.EpollEvent, 64)
	interval := c.interval()
	next := time.Now().Add(interval)
	w := newEpollWaiter(epfd)
	defer w.close()
	for {
		n, err := w.wait(events, next)
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil
		}
		for i := 0; i < n; i++ {
			key := uint64(uint32(events[i].Fd)) | uint64(uint32(events[i].Pad))<<32
			if key == wakeKey {
				var b [8]byte
				_, _ = unix.Read(c.wakefd, b[:])
				continue
			}
			v := c.byKey[key]
			if v == nil {
				continue // closed after epoll_wait returned
			}
			if v.ring != nil {
				c.drainLocked(v, sink, monoOffset)
			}
			if events[i].Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				// The thread exited: its events are dead. Close now
				// rather than at the next discovery pass.
				c.gone[v.tid] = true
				c.threadsGone.Add(1)
				c.closeVCPULocked(v)
			}
		}
		if now := time.Now(); !now.Before(next) {
			c.tickLocked(sink, now.UnixNano(), monoOffset)
			c.growRingsLocked()
			if iv := c.cfg.Interval; iv != interval {
				interval = iv
			}
			next = next.Add(interval)
			if next.Before(now) {
				next = now.Add(interval) // fell behind: skip, do not burst
			}
		}
		c.mu.Unlock()
	}
}

// epollWaiter waits on the collector's epoll descriptor. It hands the
// descriptor to Go's netpoller (an epoll descriptor is itself pollable), so
// no thread sits blocked in epoll_wait and the scheduler does not hand off
// and wake threads around it at every tick: on a node with 100 vCPUs this
// halves the agent's idle cost. Where the runtime cannot poll it, it falls
// back to a blocking epoll_wait.
type epollWaiter struct {
	epfd int
	file *os.File
	rc   syscall.RawConn
}

func newEpollWaiter(epfd int) *epollWaiter {
	w := &epollWaiter{epfd: epfd}
	// A duplicate for the os.File, which closes it; the collector keeps
	// (and closes) the original.
	dup, err := unix.FcntlInt(uintptr(epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return w
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		_ = unix.Close(dup)
		return w
	}
	f := os.NewFile(uintptr(dup), "perf-epoll")
	rc, err := f.SyscallConn()
	if err != nil || f.SetReadDeadline(time.Now().Add(time.Hour)) != nil {
		_ = f.Close()
		return w
	}
	w.file, w.rc = f, rc
	return w
}

// wait returns ready events, or none at the deadline.
func (w *epollWaiter) wait(events []unix.EpollEvent, until time.Time) (int, error) {
	if w.file == nil {
		timeout := max(int(time.Until(until)/time.Millisecond), 0)
		n, err := unix.EpollWait(w.epfd, events, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return 0, fmt.Errorf("epoll_wait: %w", err)
		}
		return max(n, 0), nil
	}
	if err := w.file.SetReadDeadline(until); err != nil {
		return 0, fmt.Errorf("epoll deadline: %w", err)
	}
	var n int
	var werr error
	err := w.rc.Read(func(fd uintptr) bool {
		n, werr = unix.EpollWait(int(fd), events, 0)
		if errors.Is(werr, unix.EINTR) {
			n, werr = 0, nil
		}
		return werr != nil || n > 0
	})
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("epoll wait: %w", err)
	case werr != nil:
		return 0, fmt.Errorf("epoll_wait: %w", werr)
	}
	return n, nil
}

func (w *epollWaiter) close() {
	if w.file != nil {
		_ = w.file.Close()
	}
}

func (c *Collector) interval() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg.Interval
}

func (c *Collector) wake() {
	c.mu.Lock()
	fd := c.wakefd
	c.mu.Unlock()
	if fd >= 0 {
		var one [8]byte
		one[0] = 1
		_, _ = unix.Write(fd, one[:])
	}
}

// growRingsLocked reopens, with a ring four times as large, the threads whose
// samples the kernel dropped since the last tick, or whose ring a drain
// found more than half full. The thread loses one
// interval's counts (the new groups start a new baseline); samples are
// what the ring is for, and a bigger ring for the few busiest vCPUs costs
// less memory than big rings for all.
func (c *Collector) growRingsLocked() {
	for _, v := range c.threads {
		if !v.lost && !v.crowded {
			continue
		}
		v.lost, v.crowded = false, false
		pages := max(c.cfg.RingPages, c.ringPages[v.tid])
		if v.ring == nil || pages >= maxRingPages {
			continue
		}
		c.ringPages[v.tid] = min(pages*4, maxRingPages)
		t := collect.Thread{Stream: v.stream, PID: v.pid, TID: v.tid}
		c.closeVCPULocked(v)
		nv, err := c.openVCPULocked(t)
		if err != nil {
			c.log.Info("reopening a vCPU thread with a larger sample ring", "stream", t.Stream, "err", err.Error())
			if errors.Is(err, errThreadGone) {
				c.gone[t.TID] = true
			}
			continue
		}
		c.threads[t.Stream] = nv
		c.byKey[nv.key] = nv
		c.ringGrowths.Add(1)
		c.log.V(1).Info("sample ring grown", "stream", t.Stream, "pages", c.ringPages[t.TID])
	}
}

// tickLocked drains every ring and the kernel's sample bins, then reads
// every group.
func (c *Collector) tickLocked(sink collect.Sink, now int64, monoOffset int64) {
	for _, v := range c.threads {
		if v.ring != nil {
			c.drainLocked(v, sink, monoOffset)
		}
	}
	c.readBinsLocked(sink)
	for _, v := range c.threads {
		c.readLocked(v, sink, now)
	}
}

func (c *Collector) readLocked(v *vcpu, sink collect.Sink, now int64) {
	r := &c.reading
	*r = collect.Reading{Stream: v.stream, Time: now, Events: c.names}
	if v.last != 0 {
		r.Duration = now - v.last
	}
	first := v.last == 0
	v.last = now
	for _, g := range v.groups {
		need := 24 + 16*len(g.fds)
		if cap(c.readBuf) < need {
			c.readBuf = make([]byte, need)
		}
		buf := c.readBuf[:need]
		n, err := unix.Read(g.fds[0], buf)
		if err != nil || n < need {
			c.readErrs.Add(1)
			continue
		}
		if err := collect.ParseGroupRead(buf[:n], &c.grp); err != nil || len(c.grp.Values) != len(g.fds) {
			c.readErrs.Add(1)
			continue
		}
		for m, slot := range g.slots {
			if g.primed {
				val, mux, err := collect.ScaleDelta(g.prevVal[m], c.grp.Values[m], g.prevEn, c.grp.Enabled, g.prevRun, c.grp.Running)
				if err == nil {
					r.Values[slot] = val
					r.Valid |= 1 << slot
					r.Multiplexed = r.Multiplexed || mux
				}
			}
			g.prevVal[m] = c.grp.Values[m]
		}
		g.prevEn, g.prevRun, g.primed = c.grp.Enabled, c.grp.Running, true
	}
	// The first read only sets the baseline.
	if !first {
		c.readings.Add(1)
		sink.Reading(r)
	}
}

func (c *Collector) drainLocked(v *vcpu, sink collect.Sink, monoOffset int64) {
	rg := v.ring
	head := atomic.LoadUint64(&rg.meta.Data_head)
	tail := rg.meta.Data_tail
	if head-tail > uint64(len(rg.data))/2 {
		v.crowded = true
	}
	newTail, corrupt := walkRing(rg.data, tail, head, &c.scratch, func(rec []byte) {
		if err := decodeRecord(rec, layout{branchStack: c.branch == 1}, &c.rec); err != nil {
			c.readErrs.Add(1)
			return
		}
		switch c.rec.kind {
		case recordSample:
			name, ok := v.sampled[c.rec.id]
			if !ok {
				return
			}
			c.samples.Add(1)
			s := &c.sample
			*s = collect.Sample{
				Stream: v.stream, Time: int64(c.rec.time) + monoOffset, Event: name,
				IP: c.rec.ip, TID: c.rec.tid, Mode: c.rec.mode,
			}
			sink.Sample(s)
			if len(c.rec.branches) > 0 {
				sink.Branches(v.stream, s.Time, c.rec.branches)
			}
		case recordLost:
			v.lost = true
			c.lost.Add(c.rec.lost)
			sink.Lost(v.stream, c.rec.lost)
		case recordThrottle:
			c.throttled.Add(1)
		}
	})
	if corrupt {
		c.readErrs.Add(1)
	}
	atomic.StoreUint64(&rg.meta.Data_tail, newTail)
}

// monotonicToWall is what to add to a CLOCK_MONOTONIC time in ns to get
// Unix time in ns.
func monotonicToWall() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	wall := time.Now().UnixNano()
	return wall - ts.Nano()
}

// Stats implements collect.Collector.
func (c *Collector) Stats() collect.Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	groups, ringBytes := 0, 0
	for _, v := range c.threads {
		groups += len(v.groups)
		if v.ring != nil {
			ringBytes += len(v.ring.mem)
		}
	}
	un := make(map[string]string, len(c.unavailable))
	for k, v := range c.unavailable {
		un[k] = v
	}
	st := collect.Stats{
		Threads: len(c.threads), PerfFDs: c.fds, Groups: groups, RingBytes: ringBytes,
		Samples: c.samples.Load(), Lost: c.lost.Load(), Throttled: c.throttled.Load(),
		Readings: c.readings.Load(), ReadErrors: c.readErrs.Load(), ThreadsGone: c.threadsGone.Load(),
		FDBudgetRefused: c.refused.Load(), RingGrowths: c.ringGrowths.Load(), Unavailable: un,
		BranchStack: c.branch == 1, BranchStackReason: c.branchReason,
	}
	c.kernelStatsLocked(&st)
	return st
}

// Close implements collect.Collector: it stops the poller and closes every
// perf descriptor, ring mapping, the epoll and the eventfd.
func (c *Collector) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	stopped := c.stopped
	running := c.running.Load()
	c.mu.Unlock()
	if running {
		c.wake()
		<-stopped
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeAllLocked()
	var errs []error
	if c.wakefd >= 0 {
		errs = append(errs, unix.Close(c.wakefd))
		c.wakefd = -1
	}
	if c.epfd >= 0 {
		errs = append(errs, unix.Close(c.epfd))
		c.epfd = -1
	}
	return errors.Join(errs...)
}
