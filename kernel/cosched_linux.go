//go:build linux && amd64

package kernel

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

func loadCoschedStep(_ context.Context, l *Loader, _ *btf.Spec) error {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("kernel: count possible CPUs: %w", err)
	}
	for _, c := range l.topology.CPUs {
		if c.ID >= ncpu {
			return fmt.Errorf("kernel: topology names CPU %d but the kernel has %d possible CPUs", c.ID, ncpu)
		}
	}
	// Every pair of peer CPUs gets one peer_acct cell, named by both.
	peersOf := map[int][]peer{}
	cells := map[[2]int]uint32{}
	for _, c := range l.topology.CPUs {
		peers := l.topology.peers(c.ID)
		if len(peers) > maxPeers {
			l.truncated = append(l.truncated, c.ID)
			peers = peers[:maxPeers]
		}
		peersOf[c.ID] = peers
		for _, p := range peers {
			k := [2]int{min(c.ID, p.cpu), max(c.ID, p.cpu)}
			if _, ok := cells[k]; !ok {
				cells[k] = uint32(len(cells))
			}
		}
	}
	o, err := l.newObject("cosched", loadCosched, map[string]int{
		"threads":   l.opts.MaxThreads,
		"pairs":     l.opts.MaxPairs,
		"cpu_state": ncpu,
		"cpu_peers": ncpu,
		"peer_acct": max(len(cells), 1),
	}, nil)
	if err != nil {
		return err
	}
	l.threads, l.pairs, l.cpuState, l.coschedStats = o.maps["threads"], o.maps["pairs"], o.maps["cpu_state"], o.maps["cosched_stats"]
	l.watchedBits = o.maps["watched_bits"]

	// The peers go in before the program attaches.
	for _, c := range l.topology.CPUs {
		peers := peersOf[c.ID]
		var v coschedCpuPeers
		v.N = uint32(len(peers))
		for i, p := range peers {
			v.Cpu[i], v.Kind[i] = uint16(p.cpu), p.kind
			v.Cell[i] = cells[[2]int{min(c.ID, p.cpu), max(c.ID, p.cpu)}]
		}
		if err := o.maps["cpu_peers"].Put(uint32(c.ID), &v); err != nil {
			return fmt.Errorf("kernel: write peers of CPU %d: %w", c.ID, err)
		}
	}

	st := l.newState(ProgramSchedSwitch, "tp_btf sched:sched_switch")
	p, err := l.program(o, "sched_switch")
	if err != nil {
		st.err = err
		return nil
	}
	lk, err := link.AttachTracing(link.TracingOptions{Program: p})
	if err != nil {
		st.err = fmt.Errorf("%w: tp_btf sched:sched_switch: %v", ErrHookMissing, err)
		return nil
	}
	l.links = append(l.links, lk)
	l.schedSwitch = p
	st.loaded, st.method = true, "tp_btf"
	return nil
}

// WatchThread registers a vCPU thread (host thread id) of a VMI (any
// stable name, e.g. "namespace/name" or the VMI's UID). Co-scheduling is
// measured between threads of different VMIs, and lock counts carry the
// name. Calling it again moves the thread to another VMI. When MaxThreads
// threads are watched it returns an error wrapping ErrTableFull.
func (l *Loader) WatchThread(tid int, vmi string) error {
	if tid <= 0 || tid >= pidMaxLimit {
		return fmt.Errorf("kernel: WatchThread: tid %d is not a thread id (1 to %d)", tid, pidMaxLimit-1)
	}
	if vmi == "" {
		return errors.New("kernel: WatchThread: vmi is empty; pass the VMI's name or UID")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	id, ok := l.vmis.id(vmi)
	if !ok {
		return fmt.Errorf("kernel: WatchThread: VMI numbers exhausted; restart the agent")
	}
	if err := l.threads.Update(uint32(tid), coschedThreadInfo{Vmi: id}, ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("kernel: WatchThread %d: %w: %d threads watched; raise Options.MaxThreads", tid, ErrTableFull, len(l.watched))
		}
		return fmt.Errorf("kernel: WatchThread %d: %w", tid, err)
	}
	// The bit after the entry: the program looks the entry up once it
	// sees the bit.
	if err := l.setWatchedBit(uint32(tid), true); err != nil {
		return fmt.Errorf("kernel: WatchThread %d: %w", tid, err)
	}
	l.watched[uint32(tid)] = id
	delete(l.goneLocks, uint32(tid))
	delete(l.gonePairs, uint32(tid))
	return nil
}

// ForgetThread stops watching a thread (it exited, or its VMI left). The
// next ReadLockCounts and ReadCoScheduling report its final figures once,
// then drop them. Forgetting an unknown thread is not an error.
func (l *Loader) ForgetThread(tid int) error {
	if tid <= 0 || tid >= pidMaxLimit {
		return fmt.Errorf("kernel: ForgetThread: tid %d is not a thread id (1 to %d)", tid, pidMaxLimit-1)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if err := l.setWatchedBit(uint32(tid), false); err != nil {
		return fmt.Errorf("kernel: ForgetThread %d: %w", tid, err)
	}
	if err := l.threads.Delete(uint32(tid)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("kernel: ForgetThread %d: %w", tid, err)
	}
	if _, ok := l.watched[uint32(tid)]; ok {
		l.gonePairs[uint32(tid)] = true
	}
	l.goneLocks[uint32(tid)] = l.watched[uint32(tid)]
	delete(l.watched, uint32(tid))
	return nil
}

// pidMaxLimit is PID_MAX_LIMIT on 64-bit Linux: thread ids are below it.
const pidMaxLimit = 4 << 20

// setWatchedBit sets or clears tid's bit in watched_bits. Only this
// process writes the words, under l.mu.
func (l *Loader) setWatchedBit(tid uint32, on bool) error {
	word := tid / 64
	var w uint64
	if err := l.watchedBits.Lookup(word, &w); err != nil {
		return err
	}
	if on {
		w |= 1 << (tid % 64)
	} else {
		w &^= 1 << (tid % 64)
	}
	return l.watchedBits.Put(word, w)
}

// Watched returns how many threads are watched.
func (l *Loader) Watched() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.watched)
}

// ReadCoScheduling returns, per pair of watched vCPU threads of different
// VMIs, how long they ran at the same time on SMT siblings and on CPUs
// sharing an LLC, and how often one followed the other on a CPU, since the
// previous call. Pairs that did not co-run since the previous call are
// evicted from the kernel map (they come back when they co-run again), so
// MaxPairs bounds the pairs active within one read interval.
func (l *Loader) ReadCoScheduling() ([]CoSchedule, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	type entry struct {
		key coschedPairKey
		val coschedPairVal
	}
	var entries []entry
	var key coschedPairKey
	var val coschedPairVal
	it := l.pairs.Iterate()
	for it.Next(&key, &val) {
		entries = append(entries, entry{key, val})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("kernel: read co-scheduling: %w", err)
	}

	keep := map[uint32]bool{}
	for _, id := range l.watched {
		keep[id] = true
	}
	for _, id := range l.goneLocks {
		keep[id] = true
	}
	var out []CoSchedule
	for _, e := range entries {
		prev := l.prevPairs[e.key]
		gone := l.gonePairs[e.key.TidA] || l.gonePairs[e.key.TidB]
		if gone || e.val == prev {
			var final coschedPairVal
			if err := l.pairs.LookupAndDelete(e.key, &final); err == nil {
				e.val = final
			} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil, fmt.Errorf("kernel: evict pair %d/%d: %w", e.key.TidA, e.key.TidB, err)
			}
			delete(l.prevPairs, e.key)
		} else {
			l.prevPairs[e.key] = e.val
			keep[e.val.VmiA], keep[e.val.VmiB] = true, true
		}
		if e.val == prev {
			continue
		}
		out = append(out, CoSchedule{
			A:         Thread{TID: int(e.key.TidA), VMI: l.vmis.name(e.val.VmiA)},
			B:         Thread{TID: int(e.key.TidB), VMI: l.vmis.name(e.val.VmiB)},
			SMT:       time.Duration(e.val.SmtNs - prev.SmtNs),
			LLC:       time.Duration(e.val.LlcNs - prev.LlcNs),
			Handovers: e.val.Handovers - prev.Handovers,
		})
	}
	clear(l.gonePairs)
	l.vmis.prune(keep)
	return out, nil
}
