//go:build linux

package perf

import (
	"errors"
	"slices"

	"github.com/sidewatch/sidewatch/kernel"
	"github.com/sidewatch/sidewatch/node-agent/collect"
)

// In-kernel sample aggregation.
//
// With a KernelSampler, every sampling event is linked to the eBPF sampler
// instead of getting a ring buffer: the kernel counts the event's samples
// per time slot (kernel.Options.SampleSlot) and per instruction pointer
// (kernel.Options.IPBinBytes), and drops them. At each interval tick the
// collector reads the bins and turns them back into the samples the rest
// of the agent consumes (collect.Sample, per vCPU stream and event), so the
// detectors receive the same trains. What is lost:
//
//   - time resolution: a sample's time is its slot, not its nanosecond.
//     A slot's n samples are spread evenly over it (not piled on one
//     instant, which would fake a periodic signal at the slot's rate), so
//     rates are exact per slot and finer structure is gone;
//   - the pairing of an address with a time within one read interval: the
//     IP bins of an interval are dealt out over its samples, evenly
//     interleaved. Counts per address per interval are exact (IP bins of a
//     partly read slot carry over to the next read);
//   - the low bits of addresses below IPBinBytes (1: none), the thread id
//     of a sample (it is the stream's), and branch stacks (none recorded).
//
// When attaching fails for the first sampling event (no sampler program,
// an old kernel), the collector uses ring buffers for everything and
// Stats.SampleModeReason says why; a later failure (a full table) puts only
// that event on a ring.

// maxPendingIPs bounds the addresses waiting for their samples per stream.
const maxPendingIPs = 1 << 16

// binnedEvent is a sampling event linked to the kernel sampler.
type binnedEvent struct {
	fd     int
	stream uint16
}

// kstream is one (vCPU, event) whose samples the kernel bins.
type kstream struct {
	v     *vcpu
	event string
	// pending are addresses read from the IP bins not yet given to a
	// sample (their slot was not complete at the read), interleaved.
	pending []binnedIP
}

type binnedIP struct {
	addr uint64
	mode collect.CPUMode
}

type kernelState struct {
	s KernelSampler
	// state: 0 not tried yet, 1 attaching works, -1 refused (reason).
	state      int
	reason     string
	streams    map[uint16]*kstream
	next       uint16
	lostSlots  uint64
	fallbacks  uint64
	expand     []binnedIP
	orphanBins uint64
}

// wanted reports whether sampling events go to the kernel sampler.
func (k *kernelState) wanted() bool { return k.s != nil && k.state >= 0 }

// UseKernelSampler makes the collector bin samples in the kernel with s
// (call before Configure). A nil s keeps ring buffers; unavailable then
// says why, for Stats.
func (c *Collector) UseKernelSampler(s KernelSampler, unavailable string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ks.s, c.ks.state, c.ks.reason = s, 0, unavailable
	if s == nil {
		c.ks.state = -1
	}
}

// attachKernelLocked links a sampling event to the kernel sampler; false
// means the event needs a ring.
func (c *Collector) attachKernelLocked(v *vcpu, fd int, event string) bool {
	k := &c.ks
	if !k.wanted() {
		return false
	}
	stream, ok := k.allocStream()
	if !ok {
		k.fallbacks++
		return false
	}
	if err := k.s.AttachSampler(fd, stream); err != nil {
		if k.state == 0 {
			k.state, k.reason = -1, "in-kernel aggregation unavailable: "+err.Error()
			c.log.Info("overflow samples go through ring buffers", "reason", k.reason)
		} else {
			k.fallbacks++
			c.log.V(1).Info("a sampling event goes through a ring buffer", "stream", v.stream, "event", event, "err", err.Error())
		}
		return false
	}
	if k.state == 0 {
		k.state = 1
		c.log.Info("overflow samples are aggregated in the kernel (eBPF sampler)")
	}
	k.streams[stream] = &kstream{v: v, event: event}
	v.binned = append(v.binned, binnedEvent{fd: fd, stream: stream})
	return true
}

// allocStream returns a stream number not in use, going round so a number
// just freed (whose last bins may still be read) is not reused at once.
func (k *kernelState) allocStream() (uint16, bool) {
	for range 1 << 16 {
		s := k.next
		k.next++
		if _, used := k.streams[s]; !used {
			return s, true
		}
	}
	return 0, false
}

// detachKernelLocked unlinks a vCPU's sampling events from the sampler.
func (c *Collector) detachKernelLocked(v *vcpu) {
	for _, b := range v.binned {
		if err := c.ks.s.DetachSampler(b.fd); err != nil && !errors.Is(err, kernel.ErrClosed) {
			c.log.V(1).Info("detaching the kernel sampler", "stream", v.stream, "err", err.Error())
		}
		delete(c.ks.streams, b.stream)
	}
	v.binned = nil
}

// readBinsLocked turns the kernel's bins since the previous tick into
// samples, stream by stream, in time order.
func (c *Collector) readBinsLocked(sink collect.Sink) {
	k := &c.ks
	if len(k.streams) == 0 {
		return
	}
	bins, err := k.s.ReadSampleBins()
	if err != nil {
		c.readErrs.Add(1)
		c.log.V(1).Info("reading the kernel's sample bins", "err", err.Error())
		if len(bins.IPs) == 0 && len(bins.Timelines) == 0 {
			return
		}
	}
	// Addresses, per stream, sorted (the map's order is the kernel's).
	slices.SortFunc(bins.IPs, func(a, b kernel.IPBin) int {
		if a.Stream != b.Stream {
			return int(a.Stream) - int(b.Stream)
		}
		switch {
		case a.Addr < b.Addr:
			return -1
		case a.Addr > b.Addr:
			return 1
		}
		return 0
	})
	for i := 0; i < len(bins.IPs); {
		j := i
		for j < len(bins.IPs) && bins.IPs[j].Stream == bins.IPs[i].Stream {
			j++
		}
		ks := k.streams[bins.IPs[i].Stream]
		if ks == nil {
			k.orphanBins += uint64(j - i)
		} else {
			k.addIPs(ks, bins.IPs[i:j])
		}
		i = j
	}
	s := &c.sample
	for _, tl := range bins.Timelines {
		ks := k.streams[tl.Stream]
		if ks == nil || ks.v.tid != tl.TID {
			continue // a stream already closed
		}
		k.lostSlots += uint64(tl.LostSlots)
		start := tl.StartTime.UnixNano()
		slot := int64(tl.Slot)
		for i, n := range tl.Counts {
			if n == 0 {
				continue
			}
			base := start + int64(i)*slot
			for j := range int64(n) {
				*s = collect.Sample{Stream: ks.v.stream, Time: base + (2*j+1)*slot/(2*int64(n)), Event: ks.event, TID: uint32(tl.TID)}
				if len(ks.pending) > 0 {
					s.IP, s.Mode = ks.pending[0].addr, ks.pending[0].mode
					ks.pending = ks.pending[1:]
				}
				sink.Sample(s)
			}
			c.samples.Add(uint64(n))
		}
		if len(ks.pending) == 0 {
			ks.pending = ks.pending[:0:0] // let the backing array go
		}
	}
}

// addIPs expands one stream's IP bins into addresses, interleaved so that
// the interval's samples get the addresses in proportion all along (a
// stride through the list sorted by address), and queues them.
func (k *kernelState) addIPs(ks *kstream, bins []kernel.IPBin) {
	e := k.expand[:0]
	for _, b := range bins {
		m := mode(b)
		for range min(b.Count, maxPendingIPs) {
			if len(e) == maxPendingIPs {
				break
			}
			e = append(e, binnedIP{addr: b.Addr, mode: m})
		}
	}
	k.expand = e
	n := len(e)
	if n == 0 {
		return
	}
	// A stride near n/φ, coprime to n: i -> i*stride mod n visits every
	// element once and spreads consecutive picks across the whole list.
	stride := max(int(float64(n)*0.6180339887+0.5), 1)
	for gcd(stride, n) != 1 {
		stride++
	}
	for i := range n {
		ks.pending = append(ks.pending, e[(i*stride)%n])
	}
	if over := len(ks.pending) - maxPendingIPs; over > 0 {
		ks.pending = ks.pending[over:]
	}
}

// mode is where a binned address was, as a ring's record says it.
func mode(b kernel.IPBin) collect.CPUMode {
	switch {
	case b.FromRegs:
		return collect.ModeUnknown // guest or host is not known
	case b.Guest && b.Kernel:
		return collect.ModeGuestKernel
	case b.Guest:
		return collect.ModeGuestUser
	case b.Kernel:
		return collect.ModeHostKernel
	}
	return collect.ModeHostUser
}

func (c *Collector) kernelStatsLocked(st *collect.Stats) {
	k := &c.ks
	ring := false
	for _, v := range c.threads {
		if v.ring != nil {
			ring = true
		}
	}
	st.KernelSampled, st.LostSlots = len(k.streams), k.lostSlots
	switch {
	case len(k.streams) > 0:
		st.SampleMode = collect.SampleModeKernel
		if ring {
			st.SampleModeReason = "some sampling events on ring buffers: the kernel sampler's tables were full"
		}
	case ring:
		st.SampleMode, st.SampleModeReason = collect.SampleModeRing, k.reason
		if k.reason == "" {
			st.SampleModeReason = "no kernel sampler given to the collector"
		}
	}
	if len(k.streams) > 0 && c.cfg.BranchStack {
		st.BranchStack, st.BranchStackReason = false, "not recorded: overflow samples are aggregated in the kernel"
	}
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
