package main

import (
	"context"

	"github.com/go-logr/logr"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/kernel"
	"github.com/sidewatch/sidewatch/node-agent/capabilities"
	"github.com/sidewatch/sidewatch/node-agent/collect/perf"
)

// withKernel loads the eBPF programs and merges what they provide into the
// node's capabilities. The loader is nil when eBPF is unusable here; the
// capabilities then say why. It also says which lock counts the agent
// takes from eBPF: bus locks only where the PMU lacks its bus-lock event
// (never both: they would count the same locks twice), split locks
// whenever the split-lock program runs (the PMU has no such event).
func withKernel(ctx context.Context, caps v1alpha1.NodeCapabilities, sysRoot string, log logr.Logger) (v1alpha1.NodeCapabilities, *kernel.Loader, bool, bool) {
	pmuBus, pmuReason := false, ""
	for _, e := range caps.PMU.Events {
		if e.Event == v1alpha1.EventBusLocks {
			pmuBus, pmuReason = e.Available, e.Reason
		}
	}
	l, err := kernel.Load(ctx, kernel.Options{SysfsRoot: sysRoot})
	if err != nil {
		log.Info("eBPF programs not loaded; PMU signals only", "err", err.Error())
		programs := []v1alpha1.ProgramStatus{{Name: "ebpf", Reason: err.Error()}}
		return capabilities.WithKernel(caps, programs, nil, nil), nil, false, false
	}
	st := l.Status()
	bus := kernel.BusLockSignal(st, pmuBus, pmuReason)
	split, _ := st.Signal(kernel.SignalSplitLocks)
	caps = capabilities.WithKernel(caps, st.Programs, st.Signals, &bus)
	return caps, l, bus.Available && !pmuBus, split.Available
}

// samplerFor says how the perf collector should take overflow samples:
// binned in the kernel by the loader's sampler program when it loaded,
// otherwise through ring buffers, with the reason the heartbeat and the
// agent's metrics then show.
func samplerFor(l *kernel.Loader) (perf.KernelSampler, string) {
	if l == nil {
		return nil, "eBPF programs not loaded"
	}
	p, ok := l.Status().Program(kernel.ProgramSampler)
	switch {
	case !ok:
		return nil, "eBPF sampler not part of the loaded programs"
	case !p.Loaded:
		return nil, "eBPF sampler not loaded: " + p.Reason
	}
	return l, ""
}
