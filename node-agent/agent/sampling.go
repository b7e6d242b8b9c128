package agent

import (
	"slices"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/collect"
)

// SignalSamples is the heartbeat signal that says how overflow samples
// reach the agent: Source "ebpf:sampler" (binned in the kernel, read at
// each interval) or "perf:ring" (a perf ring buffer per vCPU, one record
// per sample, and Reason says why not in the kernel).
const SignalSamples = "samples"

// withSampleSignal adds (or replaces) the samples signal in a copy of sig.
func (a *Agent) withSampleSignal(sig []v1alpha1.SignalStatus, mode string) []v1alpha1.SignalStatus {
	if mode == "" {
		return sig
	}
	out := slices.DeleteFunc(slices.Clone(sig), func(s v1alpha1.SignalStatus) bool { return s.Name == SignalSamples })
	st := v1alpha1.SignalStatus{Name: SignalSamples, Available: true}
	a.mu.Lock()
	reason := a.sampleReason
	a.mu.Unlock()
	switch mode {
	case collect.SampleModeKernel:
		st.Source = "ebpf:sampler"
	case collect.SampleModeRing:
		st.Source, st.Reason = "perf:ring", reason
	}
	return append(out, st)
}
