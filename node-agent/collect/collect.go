// Package collect defines how the node agent's collectors hand counter
// readings and overflow samples per vCPU thread to the rest of the agent,
// and keeps them in bounded per-vCPU buffers until the agent drains them.
//
// Collectors live in subpackages (collect/perf for perf_event_open on the
// vCPU threads, collect/replay for recorded traces) and register a Factory
// in init(). Each implements Collector; the agent only sees this package.
package collect

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// MaxEvents is the most counter events one collector configuration holds
// (the seven sidewatch events and one spare).
const MaxEvents = 8

// ErrNotSupported means a collector cannot work on this machine at all
// (Probe), e.g. perf_event_open on a non-Linux build.
var ErrNotSupported = errors.New("not supported on this system")

// StreamID names one vCPU of one VMI: the (namespace, vmi, vcpu) of the
// trace format.
type StreamID struct {
	Namespace string
	VMI       string
	VCPU      int
}

func (s StreamID) String() string { return fmt.Sprintf("%s/%s/vcpu%d", s.Namespace, s.VMI, s.VCPU) }

// Thread is a vCPU thread to watch.
type Thread struct {
	Stream StreamID
	// PID is the QEMU process, TID the vCPU thread (host pid namespace).
	PID, TID int
}

// Event is one counter to open on every vCPU thread.
type Event struct {
	// Name is the sidewatch event name (llc_misses, ...) the rest of the
	// agent and the trace format use; tests use software events under
	// their own names (task_clock, ...).
	Name string
	// Type, Config, Config1 and Config2 are perf_event_attr's fields.
	Type    uint32
	Config  uint64
	Config1 uint64
	Config2 uint64
	// Sample requests overflow samples of this event every
	// Config.SamplePeriod occurrences.
	Sample bool
}

// Config is what to collect.
type Config struct {
	// Interval between counter readings (the policy's collection.interval).
	Interval time.Duration
	// Events to count, at most MaxEvents.
	Events []Event
	// SamplePeriod is the overflow threshold of sampled events.
	SamplePeriod uint64
	// GuestOnly counts guest mode only (exclude_host).
	GuestOnly bool
	// BranchStack also records the guest's last branches on each overflow
	// where the PMU offers it; the collector falls back to IP-only samples
	// and says so in Stats when it does not.
	BranchStack bool
	// RingPages is the number of data pages of each vCPU's sample ring
	// buffer (a power of two; default 32: 128 KiB, about 3,200 samples).
	RingPages int
}

// Validate checks a configuration.
func (c Config) Validate() error {
	if c.Interval < time.Millisecond {
		return fmt.Errorf("collect: interval %v is below 1ms", c.Interval)
	}
	if len(c.Events) == 0 {
		return errors.New("collect: no events to count")
	}
	if len(c.Events) > MaxEvents {
		return fmt.Errorf("collect: %d events, at most %d", len(c.Events), MaxEvents)
	}
	seen := map[string]bool{}
	for _, e := range c.Events {
		if e.Name == "" {
			return errors.New("collect: an event has no name")
		}
		if seen[e.Name] {
			return fmt.Errorf("collect: event %s listed twice", e.Name)
		}
		seen[e.Name] = true
		if e.Sample && c.SamplePeriod == 0 {
			return fmt.Errorf("collect: event %s is sampled but the sample period is 0", e.Name)
		}
	}
	if p := c.RingPages; p != 0 && p&(p-1) != 0 {
		return fmt.Errorf("collect: ring pages %d is not a power of two", p)
	}
	return nil
}

// EventNames lists the configured event names in order.
func (c Config) EventNames() []string {
	out := make([]string, len(c.Events))
	for i, e := range c.Events {
		out[i] = e.Name
	}
	return out
}

// Reading is one vCPU's counts over one interval.
type Reading struct {
	Stream StreamID
	// Time is the end of the interval, Unix nanoseconds.
	Time int64
	// Duration is the interval's length in nanoseconds.
	Duration int64
	// Events names Values' slots; shared and read-only.
	Events []string
	// Values are the counts during the interval, scaled when the kernel
	// multiplexed the counters.
	Values [MaxEvents]uint64
	// Valid has bit i set when Values[i] was measured; an event the
	// kernel never scheduled during the interval is not 0 but unknown.
	Valid uint16
	// Multiplexed is true when a value was extrapolated from part of the
	// interval.
	Multiplexed bool
}

// Has reports whether slot i holds a measured value.
func (r *Reading) Has(i int) bool { return r.Valid&(1<<i) != 0 }

// CPUMode is where a sampled instruction pointer was.
type CPUMode uint8

// CPU modes from perf_event_header.misc & PERF_RECORD_MISC_CPUMODE_MASK.
const (
	ModeUnknown     CPUMode = 0
	ModeHostKernel  CPUMode = 1
	ModeHostUser    CPUMode = 2
	ModeHypervisor  CPUMode = 3
	ModeGuestKernel CPUMode = 4
	ModeGuestUser   CPUMode = 5
)

// Guest reports whether the sample was taken in the guest.
func (m CPUMode) Guest() bool { return m == ModeGuestKernel || m == ModeGuestUser }

func (m CPUMode) String() string {
	switch m {
	case ModeHostKernel:
		return "host-kernel"
	case ModeHostUser:
		return "host-user"
	case ModeHypervisor:
		return "hypervisor"
	case ModeGuestKernel:
		return "guest-kernel"
	case ModeGuestUser:
		return "guest-user"
	}
	return "unknown"
}

// Sample is one overflow of a sampled event.
type Sample struct {
	Stream StreamID
	// Time is when the overflow happened, Unix nanoseconds.
	Time int64
	// Event is the sampled event's name.
	Event string
	// IP is the instruction pointer, 0 when unknown.
	IP   uint64
	TID  uint32
	Mode CPUMode
}

// Branch is one taken branch of a branch stack.
type Branch struct {
	From, To uint64
}

// Sink receives what a collector measures. Its methods are called from the
// collector's single poller goroutine, must not block and must not keep
// the pointers they are given.
type Sink interface {
	Reading(r *Reading)
	Sample(s *Sample)
	// Branches is the branch stack recorded with a sample (most recent
	// first); the slice is reused after the call.
	Branches(stream StreamID, time int64, b []Branch)
	// Lost reports samples the kernel dropped because the ring was full.
	Lost(stream StreamID, n uint64)
}

// Stats are a collector's running totals.
type Stats struct {
	Threads int
	// PerfFDs is the number of open perf event descriptors.
	PerfFDs int
	Groups  int
	Samples uint64
	// Lost counts samples the kernel dropped (PERF_RECORD_LOST).
	Lost       uint64
	Throttled  uint64
	Readings   uint64
	ReadErrors uint64
	// ThreadsGone counts threads that exited while watched.
	ThreadsGone uint64
	// FDBudgetRefused counts threads not watched for lack of descriptors.
	FDBudgetRefused uint64
	// RingGrowths counts sample rings reopened larger after the kernel
	// dropped samples.
	RingGrowths uint64
	// RingBytes is the memory mapped for sample rings (it becomes resident
	// as samples fill it).
	RingBytes int
	// Unavailable maps an event name to why it cannot be counted here.
	Unavailable map[string]string
	// BranchStack is true when branch stacks are being recorded; when
	// requested but unavailable, BranchStackReason says why.
	BranchStack       bool
	BranchStackReason string
	// SampleMode is how overflow samples reach the agent: SampleModeRing
	// (a perf ring buffer per vCPU, one record per sample) or
	// SampleModeKernel (binned in the kernel by the eBPF sampler and read
	// at each interval); "" when nothing is sampled. SampleModeReason says
	// why rings are used.
	SampleMode, SampleModeReason string
	// KernelSampled counts the sampling events binned in the kernel.
	KernelSampled int
	// LostSlots counts time slots of in-kernel sample timelines that were
	// overwritten before a read (the interval exceeded the timelines'
	// span); the samples in them are missing.
	LostSlots uint64
}

// Sample modes (Stats.SampleMode).
const (
	SampleModeRing   = "ring"
	SampleModeKernel = "kernel"
)

// Collector measures vCPU threads.
type Collector interface {
	// Name identifies the collector ("perf", "replay").
	Name() string
	// Probe reports whether the collector can work here: nil available,
	// ErrNotSupported absent, anything else inconclusive.
	Probe(ctx context.Context) error
	// Configure sets what to collect; it may be called while running.
	Configure(cfg Config) error
	// SetThreads sets the vCPU threads to watch; threads not listed any
	// more are closed at once.
	SetThreads(threads []Thread) error
	// Start runs the collector, delivering to sink, until ctx ends or
	// Close is called.
	Start(ctx context.Context, sink Sink) error
	Stats() Stats
	// Close releases every descriptor and mapping.
	Close() error
}

// VMIKey names a VMI for VMISource.
type VMIKey struct{ Namespace, Name string }

// VMISource is implemented by collectors fed per VMI rather than per
// thread (the replay of a recorded trace): the agent then gives them the
// VMIs it watches instead of vCPU threads.
type VMISource interface {
	SetVMIs(vmis []VMIKey) error
}

// Options are given to a collector's factory.
type Options struct {
	Log logr.Logger
	// Source is collector specific, e.g. the trace file of the replay
	// collector.
	Source string
	// Node is this agent's node name.
	Node string
}

// Factory makes a collector.
type Factory func(Options) (Collector, error)

var (
	registryMu sync.Mutex
	registry   = map[string]Factory{}
)

// Register makes a collector available under name. Registering a name twice
// is a programming error and panics.
func Register(name string, f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("collect: collector " + name + " registered twice")
	}
	registry[name] = f
}

// New makes the collector registered under name.
func New(name string, opts Options) (Collector, error) {
	registryMu.Lock()
	f, ok := registry[name]
	registryMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("collect: no collector %q (have %v)", name, Names())
	}
	return f(opts)
}

// Names lists the registered collectors.
func Names() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	var out []string
	for n := range registry {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}
