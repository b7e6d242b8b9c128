//go:build linux && amd64

package kernel

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ip_key.mode bits in include/sidewatch.h.
const (
	modeGuest  = 1 << 0
	modeKernel = 1 << 1
	modeRegs   = 1 << 2
)

func loadSamplerStep(_ context.Context, l *Loader, _ *btf.Spec) error {
	pass := uint32(0)
	if l.opts.PassSamples {
		pass = 1
	}
	o, err := l.newObject("sampler", loadSampler, map[string]int{
		"samplers":  l.opts.MaxSamplers,
		"ip_bins":   l.opts.MaxIPBins,
		"timelines": l.opts.MaxTimelines,
	}, map[string]any{
		"ip_shift":     uint32(bits.TrailingZeros(uint(l.opts.IPBinBytes))),
		"slot_ns":      uint64(l.opts.SampleSlot),
		"base_ns":      l.baseNs,
		"pass_samples": pass,
	})
	if err != nil {
		return err
	}
	l.samplers, l.ipBins, l.timelines, l.samplerStats = o.maps["samplers"], o.maps["ip_bins"], o.maps["timelines"], o.maps["sampler_stats"]

	// Loaded now, attached per perf event by AttachSampler.
	st := l.newState(ProgramSampler, "perf_event (attached by AttachSampler)")
	p, err := l.program(o, "sample")
	if err != nil {
		st.err = err
		return nil
	}
	l.sample = p
	st.loaded, st.method = true, "perf_event link"
	return nil
}

// AttachSampler links the sampler to a sampling perf event the collector
// opened (one thread, any event; PERF_SAMPLE_IP in its sample_type for
// guest IPs) under the collector's stream number for that event. From then
// on its samples are binned in the kernel and, unless Options.PassSamples,
// never reach the event's ring buffer. The link holds its own reference to
// the event: call DetachSampler before closing perfFD.
func (l *Loader) AttachSampler(perfFD int, stream uint16) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.sample == nil {
		return fmt.Errorf("kernel: AttachSampler: %w: %v", ErrNotLoaded, l.state(ProgramSampler).err)
	}
	if _, ok := l.attached[perfFD]; ok {
		return fmt.Errorf("kernel: AttachSampler: perf event fd %d is already attached", perfFD)
	}
	var id uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(perfFD), unix.PERF_EVENT_IOC_ID, uintptr(unsafe.Pointer(&id))); errno != 0 {
		return fmt.Errorf("kernel: AttachSampler: fd %d is not a perf event (PERF_EVENT_IOC_ID): %w", perfFD, errno)
	}
	if err := l.samplers.Update(id, samplerSamplerInfo{Stream: uint32(stream)}, ebpf.UpdateNoExist); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("kernel: AttachSampler: %w: %d perf events attached; raise Options.MaxSamplers", ErrTableFull, len(l.attached))
		}
		return fmt.Errorf("kernel: AttachSampler: register perf event id %d: %w", id, err)
	}
	lk, err := link.AttachRawLink(link.RawLinkOptions{Target: perfFD, Program: l.sample, Attach: ebpf.AttachPerfEvent})
	if err != nil {
		_ = l.samplers.Delete(id)
		return fmt.Errorf("kernel: AttachSampler: link to perf event fd %d (needs Linux 5.15): %w", perfFD, err)
	}
	l.attached[perfFD] = &attachment{link: lk, id: id}
	return nil
}

// DetachSampler unlinks the sampler from a perf event attached with
// AttachSampler.
func (l *Loader) DetachSampler(perfFD int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	a, ok := l.attached[perfFD]
	if !ok {
		return fmt.Errorf("kernel: DetachSampler: perf event fd %d is not attached", perfFD)
	}
	delete(l.attached, perfFD)
	err := a.link.Close()
	if derr := l.samplers.Delete(a.id); derr != nil && !errors.Is(derr, ebpf.ErrKeyNotExist) {
		err = errors.Join(err, derr)
	}
	if err != nil {
		return fmt.Errorf("kernel: DetachSampler fd %d: %w", perfFD, err)
	}
	return nil
}

// ReadSampleBins drains the IP bins (each read returns the samples since
// the previous one) and returns, per (thread, stream), the samples per
// complete time slot since the previous read.
func (l *Loader) ReadSampleBins() (SampleBins, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return SampleBins{}, ErrClosed
	}
	var out SampleBins
	ips, err := l.drainIPBins()
	if err != nil {
		return out, err
	}
	out.IPs = ips
	tls, err := l.readTimelines()
	if err != nil {
		return out, err
	}
	out.Timelines = tls
	return out, nil
}

func (l *Loader) drainIPBins() ([]IPBin, error) {
	const chunk = 4096
	keys := make([]samplerIpKey, chunk)
	vals := make([]uint64, chunk)
	var out []IPBin
	var cursor ebpf.MapBatchCursor
	for {
		n, err := l.ipBins.BatchLookupAndDelete(&cursor, keys, vals, nil)
		for i := range n {
			k := keys[i]
			out = append(out, IPBin{
				TID:      int(k.Tid),
				Stream:   k.Stream,
				Guest:    k.Mode&modeGuest != 0,
				Kernel:   k.Mode&modeKernel != 0,
				FromRegs: k.Mode&modeRegs != 0,
				Addr:     k.Bucket << bits.TrailingZeros(uint(l.opts.IPBinBytes)),
				Count:    vals[i],
			})
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("kernel: drain IP bins: %w", err)
		}
	}
}

func (l *Loader) readTimelines() ([]Timeline, error) {
	type entry struct {
		key samplerTimelineKey
		val samplerTimeline
	}
	var entries []entry
	var key samplerTimelineKey
	val := new(samplerTimeline)
	it := l.timelines.Iterate()
	for it.Next(&key, val) {
		entries = append(entries, entry{key, *val})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("kernel: read sample timelines: %w", err)
	}

	slot := uint64(l.opts.SampleSlot)
	now := monotonicNow()
	curAbs := (now - l.baseNs) / slot
	cur := uint32(curAbs)
	var out []Timeline
	for _, e := range entries {
		mark, known := l.prevTimelines[e.key]
		evicted := false
		if known && e.val.Samples == mark.samples {
			// Idle for a whole interval: evict; it comes back with the
			// next sample. A sample racing the delete is reported.
			var final samplerTimeline
			if err := l.timelines.LookupAndDelete(e.key, &final); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil, fmt.Errorf("kernel: evict timeline %d/%d: %w", e.key.Tid, e.key.Stream, err)
			}
			delete(l.prevTimelines, e.key)
			if final.Samples == mark.samples {
				continue
			}
			e.val, evicted = final, true
		}
		var start uint32
		if known {
			start = mark.last + 1
		} else {
			start = uint32((e.val.FirstNs - l.baseNs) / slot)
		}
		tl := Timeline{
			TID:          int(e.key.Tid),
			Stream:       uint16(e.key.Stream),
			Slot:         l.opts.SampleSlot,
			Samples:      e.val.Samples - mark.samples,
			GuestSamples: e.val.GuestSamples - mark.guestSamples,
		}
		// Slots older than the ring are gone.
		if gap := cur - start; gap > timelineSlots-1 && gap < 1<<31 {
			tl.LostSlots = int(gap - (timelineSlots - 1))
			start = cur - (timelineSlots - 1)
		}
		for s := start; s != cur; s++ {
			i := s % timelineSlots
			var n uint32
			if e.val.Slot[i] == s {
				n = e.val.Count[i]
			}
			tl.Counts = append(tl.Counts, n)
		}
		startMono := l.baseNs + (curAbs-uint64(cur-start))*slot
		tl.Start = time.Duration(startMono)
		tl.StartTime = monotonicToWall(startMono)
		if !evicted {
			l.prevTimelines[e.key] = timelineMark{last: cur - 1, samples: e.val.Samples, guestSamples: e.val.GuestSamples}
		}
		out = append(out, tl)
	}
	return out, nil
}
