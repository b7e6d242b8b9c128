package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/record"
)

// RecordOptions configure Record.
type RecordOptions struct {
	Log      logr.Logger
	ProcRoot string
	// Collector counts; Config says what.
	Collector collect.Collector
	Config    collect.Config
	// VMIs are patterns ("namespace/name", "namespace/*", "name") of the
	// guests to record; none records every guest on the node.
	VMIs []string
	// Writer receives the rows.
	Writer *record.Writer
	// Duration stops the recording (0: until ctx ends).
	Duration time.Duration
	// RescanInterval is how often new guests and vCPU threads are looked
	// for (default 1s).
	RescanInterval time.Duration
}

// RecordStats summarise a recording.
type RecordStats struct {
	Rows          uint64
	VMIs, VCPUs   int
	Samples, Lost uint64
	Unavailable   map[string]string
}

// Record counts and samples the QEMU guests of the node and writes what it
// measures as trace rows until Duration passes or ctx ends. Guests are
// found from the proc tree alone (libvirt's guest names), so it needs no
// API server.
func Record(ctx context.Context, o RecordOptions) (st RecordStats, err error) {
	if o.RescanInterval <= 0 {
		o.RescanInterval = time.Second
	}
	if err := o.Collector.Configure(o.Config); err != nil {
		return st, err
	}
	buffers := collect.NewBuffers(collect.BufferLimits{})
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.Duration > 0 {
		var c2 context.CancelFunc
		cctx, c2 = context.WithTimeout(cctx, o.Duration)
		defer c2()
	}
	done := make(chan error, 1)
	go func() { done <- o.Collector.Start(cctx, buffers) }()
	defer func() {
		cancel()
		cerr := o.Collector.Close()
		if serr := <-done; serr != nil && err == nil {
			err = serr
		}
		// What the collector delivered up to its end is written.
		buffers.Drain(o.Writer)
		if ferr := o.Writer.Flush(); err == nil {
			err = errors.Join(ferr, cerr)
		}
		st.Rows = o.Writer.Rows()
		cs := o.Collector.Stats()
		st.Samples, st.Lost, st.Unavailable = cs.Samples, cs.Lost, cs.Unavailable
	}()

	scanner := discovery.Scanner{ProcRoot: o.ProcRoot}
	rescan := time.NewTicker(o.RescanInterval)
	defer rescan.Stop()
	drain := time.NewTicker(o.Config.Interval)
	defer drain.Stop()
	seen := map[discovery.VMIRef]bool{}
	scan := func() error {
		procs, err := scanner.Scan()
		if err != nil {
			return err
		}
		procs = discovery.FilterRefs(procs, o.VMIs)
		var threads []collect.Thread
		for _, p := range procs {
			if !seen[p.VMI] {
				o.Log.Info("recording", "vmi", p.VMI, "pid", p.PID, "vcpus", len(p.VCPUs), "accelerator", p.Accelerator)
				seen[p.VMI] = true
			}
			for _, v := range p.VCPUs {
				threads = append(threads, collect.Thread{
					Stream: collect.StreamID{Namespace: p.VMI.Namespace, VMI: p.VMI.Name, VCPU: v.Index},
					PID:    p.PID, TID: v.TID,
				})
			}
		}
		st.VMIs, st.VCPUs = max(st.VMIs, len(procs)), max(st.VCPUs, len(threads))
		if err := o.Collector.SetThreads(threads); err != nil {
			return err
		}
		if cs := o.Collector.Stats(); len(threads) > 0 && cs.PerfFDs == 0 && len(cs.Unavailable) > 0 {
			return fmt.Errorf("no event could be opened: %s", unavailableString(cs.Unavailable))
		}
		return nil
	}
	if err := scan(); err != nil {
		return st, err
	}
	flushEvery := time.NewTicker(time.Second)
	defer flushEvery.Stop()
	for {
		select {
		case <-cctx.Done():
			if ctx.Err() != nil && !errors.Is(ctx.Err(), context.Canceled) {
				return st, ctx.Err()
			}
			return st, nil
		case err := <-done:
			done <- err // for the deferred wait
			if err != nil {
				return st, fmt.Errorf("collector: %w", err)
			}
			return st, nil
		case <-rescan.C:
			if err := scan(); err != nil {
				return st, err
			}
		case <-drain.C:
			buffers.Drain(o.Writer)
		case <-flushEvery.C:
			if err := o.Writer.Flush(); err != nil {
				return st, err
			}
		}
	}
}

func unavailableString(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+": "+v)
	}
	return strings.Join(parts, "; ")
}
