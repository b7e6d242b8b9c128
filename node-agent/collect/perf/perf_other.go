//go:build !linux

package perf

import (
	"context"

	"github.com/go-logr/logr"

	"github.com/sidewatch/sidewatch/node-agent/collect"
)

func init() {
	collect.Register("perf", func(o collect.Options) (collect.Collector, error) { return New(o.Log), nil })
}

// Collector is unavailable off Linux: perf_event_open is a Linux system call.
type Collector struct{}

// New returns a collector whose every method reports ErrNotSupported.
func New(logr.Logger) *Collector { return &Collector{} }

func (*Collector) Name() string                              { return "perf" }
func (*Collector) Probe(context.Context) error               { return collect.ErrNotSupported }
func (*Collector) Configure(collect.Config) error            { return collect.ErrNotSupported }
func (*Collector) SetThreads([]collect.Thread) error         { return collect.ErrNotSupported }
func (*Collector) Start(context.Context, collect.Sink) error { return collect.ErrNotSupported }
func (*Collector) Stats() collect.Stats                      { return collect.Stats{} }
func (*Collector) Close() error                              { return nil }

// UseKernelSampler does nothing off Linux.
func (*Collector) UseKernelSampler(KernelSampler, string) {}
