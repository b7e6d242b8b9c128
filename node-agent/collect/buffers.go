package collect

import (
	"slices"
	"sync"
	"sync/atomic"
)

// BufferLimits bound what Buffers keep per vCPU between two drains.
type BufferLimits struct {
	// Readings per vCPU (default 64: 6.4 s at 100 ms).
	Readings int
	// Samples per vCPU (default 16384: 384 KiB, a third of a second at
	// 50,000 samples/s).
	Samples int
	// BranchTargets per vCPU (default 512).
	BranchTargets int
}

func (l BufferLimits) withDefaults() BufferLimits {
	if l.Readings <= 0 {
		l.Readings = 64
	}
	if l.Samples <= 0 {
		l.Samples = 16384
	}
	if l.BranchTargets <= 0 {
		l.BranchTargets = 512
	}
	return l
}

// Buffers is the Sink the agent gives its collectors: bounded per-vCPU
// rings of readings and samples that the agent drains at its own pace.
// When a consumer falls behind, the oldest entries are dropped and
// counted, so a slow detector or API server never grows the agent's
// memory. It is safe for one collector goroutine and one drainer.
type Buffers struct {
	limits BufferLimits

	mu      sync.Mutex
	streams map[StreamID]*streamBuffer
	// events interns sample event names, so a buffered sample is 24 bytes.
	events []string
	// pressure is signalled when a stream's samples pass half its bound.
	pressure chan struct{}

	droppedReadings atomic.Uint64
	droppedSamples  atomic.Uint64
	lost            atomic.Uint64
	samples         atomic.Uint64

	// scratch, reused by Drain
	order    []StreamID
	readings []Reading
	sampled  []bufferedSample
	targets  []uint64
	sample   Sample
}

type streamBuffer struct {
	readings ring[Reading]
	samples  ring[bufferedSample]
	targets  ring[uint64]
	lost     uint64
}

// bufferedSample is a Sample without its stream (the ring is the
// stream's) and with its event interned.
type bufferedSample struct {
	time int64
	ip   uint64
	tid  uint32
	mode CPUMode
	ev   uint8
}

// NewBuffers makes empty buffers.
func NewBuffers(limits BufferLimits) *Buffers {
	return &Buffers{limits: limits.withDefaults(), streams: map[StreamID]*streamBuffer{}, pressure: make(chan struct{}, 1)}
}

// Pressure receives when some vCPU's samples fill half its buffer: the
// consumer should drain now rather than at its next tick.
func (b *Buffers) Pressure() <-chan struct{} { return b.pressure }

func (b *Buffers) eventIndex(name string) uint8 {
	for i, e := range b.events {
		if e == name {
			return uint8(i)
		}
	}
	if len(b.events) == 255 {
		return 255
	}
	b.events = append(b.events, name)
	return uint8(len(b.events) - 1)
}

func (b *Buffers) stream(id StreamID) *streamBuffer {
	s := b.streams[id]
	if s == nil {
		s = &streamBuffer{
			readings: ring[Reading]{max: b.limits.Readings},
			samples:  ring[bufferedSample]{max: b.limits.Samples},
			targets:  ring[uint64]{max: b.limits.BranchTargets},
		}
		b.streams[id] = s
	}
	return s
}

// Reading implements Sink.
func (b *Buffers) Reading(r *Reading) {
	b.mu.Lock()
	if b.stream(r.Stream).readings.push(*r) {
		b.droppedReadings.Add(1)
	}
	b.mu.Unlock()
}

// Sample implements Sink.
func (b *Buffers) Sample(s *Sample) {
	b.samples.Add(1)
	b.mu.Lock()
	st := b.stream(s.Stream)
	if st.samples.push(bufferedSample{time: s.Time, ip: s.IP, tid: s.TID, mode: s.Mode, ev: b.eventIndex(s.Event)}) {
		b.droppedSamples.Add(1)
	}
	half := st.samples.n == b.limits.Samples/2
	b.mu.Unlock()
	if half {
		select {
		case b.pressure <- struct{}{}:
		default:
		}
	}
}

// Branches implements Sink: the branch targets are kept for attribution.
func (b *Buffers) Branches(stream StreamID, _ int64, br []Branch) {
	b.mu.Lock()
	s := b.stream(stream)
	for _, x := range br {
		s.targets.push(x.To)
	}
	b.mu.Unlock()
}

// Lost implements Sink.
func (b *Buffers) Lost(stream StreamID, n uint64) {
	b.lost.Add(n)
	b.mu.Lock()
	b.stream(stream).lost += n
	b.mu.Unlock()
}

// Forget drops a stream's buffers (its VMI left the node).
func (b *Buffers) Forget(stream StreamID) {
	b.mu.Lock()
	delete(b.streams, stream)
	b.mu.Unlock()
}

// Visitor receives drained data, one stream at a time, readings and
// samples merged in time order. The pointers are valid during the call.
type Visitor interface {
	Reading(r *Reading)
	Sample(s *Sample)
	// BranchTargets are the branch targets recorded since the last drain.
	BranchTargets(stream StreamID, targets []uint64)
}

// Drain hands everything buffered to v and empties the buffers. Streams
// are visited in a fixed order (namespace, vmi, vcpu). The lock is held
// only while copying, never while v runs.
func (b *Buffers) Drain(v Visitor) {
	b.order = b.order[:0]
	b.mu.Lock()
	for id := range b.streams {
		b.order = append(b.order, id)
	}
	b.mu.Unlock()
	slices.SortFunc(b.order, compareStreams)
	for _, id := range b.order {
		b.mu.Lock()
		s := b.streams[id]
		if s == nil {
			b.mu.Unlock()
			continue
		}
		b.readings = s.readings.drainTo(b.readings[:0])
		b.sampled = s.samples.drainTo(b.sampled[:0])
		b.targets = s.targets.drainTo(b.targets[:0])
		events := b.events
		b.mu.Unlock()
		i, j := 0, 0
		for i < len(b.readings) || j < len(b.sampled) {
			// A sample at a reading's end time belongs to that interval.
			if j < len(b.sampled) && (i == len(b.readings) || b.sampled[j].time <= b.readings[i].Time) {
				x := &b.sampled[j]
				b.sample = Sample{Stream: id, Time: x.time, IP: x.ip, TID: x.tid, Mode: x.mode}
				if int(x.ev) < len(events) {
					b.sample.Event = events[x.ev]
				}
				v.Sample(&b.sample)
				j++
				continue
			}
			v.Reading(&b.readings[i])
			i++
		}
		if len(b.targets) > 0 {
			v.BranchTargets(id, b.targets)
		}
	}
}

// BufferStats are Buffers' running totals.
type BufferStats struct {
	// Samples is every sample received.
	Samples uint64
	// Lost counts samples the kernel dropped.
	Lost uint64
	// DroppedReadings and DroppedSamples were overwritten before a drain.
	DroppedReadings uint64
	DroppedSamples  uint64
	Streams         int
}

// Stats returns the totals.
func (b *Buffers) Stats() BufferStats {
	b.mu.Lock()
	n := len(b.streams)
	b.mu.Unlock()
	return BufferStats{
		Samples:         b.samples.Load(),
		Lost:            b.lost.Load(),
		DroppedReadings: b.droppedReadings.Load(),
		DroppedSamples:  b.droppedSamples.Load(),
		Streams:         n,
	}
}

func compareStreams(a, b StreamID) int {
	switch {
	case a.Namespace != b.Namespace:
		if a.Namespace < b.Namespace {
			return -1
		}
		return 1
	case a.VMI != b.VMI:
		if a.VMI < b.VMI {
			return -1
		}
		return 1
	}
	return a.VCPU - b.VCPU
}

// ring is a FIFO of at most max entries that overwrites its oldest entry
// when full. Its storage grows on demand up to max, so idle vCPUs cost
// little memory.
type ring[T any] struct {
	buf   []T
	start int
	n     int
	max   int
}

// push appends v and reports whether the oldest entry was dropped.
func (r *ring[T]) push(v T) (dropped bool) {
	if r.n < len(r.buf) {
		r.buf[(r.start+r.n)%len(r.buf)] = v
		r.n++
		return false
	}
	if len(r.buf) < r.max {
		// Grow: unroll into a larger slice so start is 0 again.
		next := make([]T, min(max(2*len(r.buf), 8), r.max))
		copy(next, r.buf[r.start:])
		copy(next[len(r.buf)-r.start:], r.buf[:r.start])
		r.buf, r.start = next, 0
		r.buf[r.n] = v
		r.n++
		return false
	}
	r.buf[r.start] = v
	r.start = (r.start + 1) % len(r.buf)
	return true
}

// drainTo appends the entries oldest first to dst and empties the ring.
func (r *ring[T]) drainTo(dst []T) []T {
	for i := 0; i < r.n; i++ {
		dst = append(dst, r.buf[(r.start+i)%len(r.buf)])
	}
	r.start, r.n = 0, 0
	return dst
}
