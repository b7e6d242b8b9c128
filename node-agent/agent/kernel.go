package agent

import (
	"time"

	"github.com/sidewatch/sidewatch/node-agent/collect"
)

// setKernelThreads registers the watched vCPU threads with the eBPF
// loader, and forgets the ones no longer watched.
func (a *Agent) setKernelThreads(threads []collect.Thread) {
	if a.opts.Kernel == nil {
		return
	}
	want := make(map[int]collect.StreamID, len(threads))
	for _, t := range threads {
		want[t.TID] = t.Stream
	}
	for tid := range a.kthreads {
		if _, ok := want[tid]; !ok {
			if err := a.opts.Kernel.ForgetThread(tid); err != nil {
				a.log.V(1).Info("eBPF: forgetting a thread", "tid", tid, "err", err.Error())
			}
			delete(a.kthreads, tid)
		}
	}
	for tid, s := range want {
		if _, ok := a.kthreads[tid]; ok {
			continue
		}
		if err := a.opts.Kernel.WatchThread(tid, s.Namespace+"/"+s.VMI); err != nil {
			a.log.Info("eBPF: cannot watch a vCPU thread", "tid", tid, "stream", s, "err", err.Error())
			continue
		}
		a.kthreads[tid] = s
	}
}

// readKernelLocks feeds the locks the eBPF programs counted per vCPU
// thread since the last read. Each counter's observations of a stream stay
// in time order: the PMU and eBPF never both provide one counter.
func (a *Agent) readKernelLocks(now time.Time) {
	if a.opts.Kernel == nil || a.detector == nil || !(a.opts.KernelBusLocks || a.opts.KernelSplitLocks) || len(a.kthreads) == 0 {
		return
	}
	counts, err := a.opts.Kernel.ReadLockCounts()
	if err != nil {
		a.log.V(1).Info("eBPF: reading lock counts", "err", err.Error())
		return
	}
	t := now.UnixNano()
	for _, c := range counts {
		s, ok := a.kthreads[c.TID]
		if !ok {
			continue
		}
		if a.opts.KernelBusLocks {
			a.handle(a.detector.Observe(t, s, "bus_locks", false, c.BusLockExits+c.BusLockCoincident+c.HostBusLocks))
		}
		if a.opts.KernelSplitLocks {
			a.handle(a.detector.Observe(t, s, "split_locks", false, c.SplitLocks))
		}
	}
}
