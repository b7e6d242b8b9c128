// Package perf is the collector that counts and samples events on vCPU
// threads with perf_event_open(2): per thread one event group read at the
// policy's interval, overflow samples of the guest instruction pointer
// (and branch stack where the PMU records the guest's branches) in one
// mmap ring per thread, all ring buffers served by a single epoll poller.
package perf

import "github.com/sidewatch/sidewatch/node-agent/collect"

// perf_event_attr.type values.
const (
	TypeHardware = 0
	TypeSoftware = 1
	TypeRaw      = 4
)

// Generic hardware event configs (PERF_TYPE_HARDWARE).
const (
	HWCPUCycles       = 0
	HWInstructions    = 1
	HWCacheReferences = 2
	HWCacheMisses     = 3
)

// Software event configs (PERF_TYPE_SOFTWARE).
const (
	SWCPUClock        = 0
	SWTaskClock       = 1
	SWPageFaults      = 2
	SWContextSwitches = 3
	SWCPUMigrations   = 4
)

// Software returns the software events available on any Linux kernel,
// under their own names. They go through exactly the same group, read and
// ring buffer paths as hardware events, which is how the collector is
// tested on machines without a PMU; they say nothing about caches.
func Software() []collect.Event {
	return []collect.Event{
		{Name: "task_clock", Type: TypeSoftware, Config: SWTaskClock},
		{Name: "context_switches", Type: TypeSoftware, Config: SWContextSwitches},
		{Name: "page_faults", Type: TypeSoftware, Config: SWPageFaults},
		{Name: "cpu_migrations", Type: TypeSoftware, Config: SWCPUMigrations},
	}
}
