//go:build linux && amd64

package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// lock_counts.flags in include/sidewatch.h.
const (
	lockFlagKVMExit        = 1 << 0
	lockFlagVMX            = 1 << 1
	lockFlagSVM            = 1 << 2
	lockFlagBusLockExitsOn = 1 << 3
)

func loadBuslockStep(_ context.Context, l *Loader, _ *btf.Spec) error {
	o, err := l.newObject("buslock", loadBuslock, map[string]int{
		"lock_counts": l.opts.MaxThreads,
	}, map[string]any{
		"layout_flags":        l.layout.flags(),
		"vmx_exit_reason_off": l.layout.VMXExitReason,
		"svm_vmcb_off":        l.layout.SVMVMCB,
		"vmcb_exit_code_off":  l.layout.VMCBExitCode,
		"vcpu_kvm_off":        l.layout.VCPUKVM,
		"kvm_bus_lock_off":    l.layout.KVMBusLockEnabled,
	})
	if err != nil {
		return err
	}
	l.lockCounts, l.lockStats = o.maps["lock_counts"], o.maps["lock_stats"]

	// kvm_exit: loaded even where the tracepoint is missing, so a verifier
	// rejection shows on every node, then attached by name (raw tracepoints
	// need no tracefs).
	st := l.newState(ProgramKVMExit, "raw_tp kvm:kvm_exit")
	if p, err := l.program(o, "kvm_exit"); err != nil {
		st.err = err
	} else {
		l.kvmExit = p
		lk, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "kvm_exit", Program: p})
		if err != nil {
			st.err = fmt.Errorf("%w: raw tracepoint kvm:kvm_exit (is KVM built in or module kvm loaded?): %v", ErrHookMissing, err)
		} else {
			l.links = append(l.links, lk)
			st.loaded, st.method = true, "raw_tp"
		}
	}

	st = l.newState(ProgramSplitLock, "handle_guest_split_lock")
	l.attachFunction(o, st, "split_lock", "split_lock_kprobe", "handle_guest_split_lock", false)
	st = l.newState(ProgramHostBusLock, "handle_bus_lock")
	l.attachFunction(o, st, "host_bus_lock", "host_bus_lock_kprobe", "handle_bus_lock", false)
	return nil
}

// ReadLockCounts returns, per thread, the bus and split locks counted since
// the previous call (the first call: since Load), by source. Every watched
// thread is listed, with zero counts if need be, so its KVMExits and
// BusLockExitEnabled flags are always there; unwatched threads are listed
// when they counted something. A thread passed to ForgetThread is listed
// one last time with its final counts.
func (l *Loader) ReadLockCounts() ([]LockCounts, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	type entry struct {
		tid uint32
		val buslockLockCounts
	}
	var entries []entry
	var key uint32
	var val buslockLockCounts
	it := l.lockCounts.Iterate()
	for it.Next(&key, &val) {
		entries = append(entries, entry{key, val})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("kernel: read lock counts: %w", err)
	}

	var out []LockCounts
	seen := map[uint32]bool{}
	for _, e := range entries {
		seen[e.tid] = true
		_, watched := l.watched[e.tid]
		prev := l.prevLocks[e.tid]
		_, gone := l.goneLocks[e.tid]
		evict := gone || (!watched && e.val == prev && !threadAlive(e.tid))
		if evict {
			// Take the final value atomically with the delete.
			var final buslockLockCounts
			if err := l.lockCounts.LookupAndDelete(e.tid, &final); err == nil {
				e.val = final
			} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil, fmt.Errorf("kernel: evict lock counts of thread %d: %w", e.tid, err)
			}
			delete(l.prevLocks, e.tid)
		} else {
			l.prevLocks[e.tid] = e.val
		}
		lc := l.lockDelta(e.tid, prev, e.val)
		if watched || lc.SplitLocks+lc.BusLockExits+lc.BusLockCoincident+lc.HostBusLocks > 0 {
			out = append(out, lc)
		}
	}
	// Watched threads without an entry yet still appear.
	for tid := range l.watched {
		if !seen[tid] {
			out = append(out, LockCounts{TID: int(tid), VMI: l.vmis.name(l.watched[tid])})
		}
	}
	clear(l.goneLocks)
	return out, nil
}

func (l *Loader) lockDelta(tid uint32, prev, cur buslockLockCounts) LockCounts {
	lc := LockCounts{
		TID:                int(tid),
		SplitLocks:         cur.SplitLocks - prev.SplitLocks,
		BusLockExits:       cur.BusLockExits - prev.BusLockExits,
		BusLockCoincident:  cur.BusLockCoincident - prev.BusLockCoincident,
		HostBusLocks:       cur.HostBusLocks - prev.HostBusLocks,
		LastSplitLockIP:    cur.LastSplitLockIp,
		LastHostBusLockIP:  cur.LastHostBusLockIp,
		LastExitReason:     cur.LastExitReason,
		KVMExits:           cur.Flags&lockFlagKVMExit != 0,
		BusLockExitEnabled: cur.Flags&lockFlagBusLockExitsOn != 0,
	}
	switch {
	case cur.Flags&lockFlagVMX != 0:
		lc.ISA = "vmx"
	case cur.Flags&lockFlagSVM != 0:
		lc.ISA = "svm"
	}
	if id, ok := l.watched[tid]; ok {
		lc.VMI = l.vmis.name(id)
	} else if id, ok := l.goneLocks[tid]; ok {
		lc.VMI = l.vmis.name(id)
	}
	return lc
}

// threadAlive reports whether a thread id exists in the host PID
// namespace (the agent runs with hostPID, as the programs see host ids).
func threadAlive(tid uint32) bool {
	_, err := os.Stat("/proc/" + strconv.FormatUint(uint64(tid), 10))
	return err == nil
}
