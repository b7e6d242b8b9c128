package perf

import "github.com/sidewatch/sidewatch/kernel"

// KernelSampler is the in-kernel aggregation of overflow samples
// (kernel.Loader): an eBPF program attached to each sampling event bins
// the sample's instruction pointer and time per (thread, stream) in maps
// and drops the sample, so a high sample rate never wakes user space per
// sample.
type KernelSampler interface {
	AttachSampler(perfFD int, stream uint16) error
	DetachSampler(perfFD int) error
	ReadSampleBins() (kernel.SampleBins, error)
}
