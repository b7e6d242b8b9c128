// Package kernel loads sidewatch's eBPF programs and reads what they
// record. The node agent owns one Loader for its lifetime.
//
// # Programs
//
// Three objects are compiled from kernel/*.bpf.c by bpf2go (see gen.go and
// `make generate-bpf`); the generated Go and .o files are committed.
//
//   - buslock.bpf.c: bus and split locks of guests, per thread, without a
//     PMU. kvm_exit (raw tracepoint kvm:kvm_exit) counts bus-lock VM exits:
//     VMX exit reason 74, VMX exits of another reason with the
//     bus_lock_detected bit (26), SVM exit code 0xa5. They exist only for
//     VMs whose VMM enabled KVM_CAP_X86_BUS_LOCK_EXIT; for the others the
//     PMU's bus-lock event is the signal (BusLockSignal decides). split_lock
//     hooks handle_guest_split_lock (guest #AC on a split lock) and
//     host_bus_lock hooks handle_bus_lock (#DB after a bus lock in host user
//     mode, e.g. a TCG vCPU thread), with fentry or else a kprobe.
//   - cosched.bpf.c: sched_switch (tp_btf) measures, per pair of watched
//     vCPU threads of different VMIs, how long they ran at the same time on
//     SMT siblings of one core and on CPUs sharing a last-level cache
//     (topology from sysfs), and how often one took a CPU over right after
//     the other. Detectors weight suspects with it: an L1 or SMT-port
//     attack is impossible without core sharing, an LLC attack without LLC
//     sharing.
//   - sampler.bpf.c: sample (perf_event) bins the collector's overflow
//     samples by instruction pointer and by time slot per (thread, stream)
//     and drops them, so a high sample rate costs a map update in the
//     kernel instead of a wakeup of user space per sample. It records the
//     IP perf put in the sample (perf_sample_data.ip), which under hardware
//     KVM is the guest's RIP when the overflow hit the vCPU in guest mode;
//     it differs then from the interrupted host registers, which is how a
//     guest sample is told from a host one (IPBin.Guest).
//
// # API
//
//	l, err := kernel.Load(ctx, kernel.Options{})   // load and attach what the kernel supports
//	defer l.Close()                                // links, then programs, then maps
//	l.Status()                                     // Programs and Signals for NodeCapabilities
//	l.ProgramErr(kernel.ProgramKVMExit)            // why one did not load (ErrHookMissing, ...)
//	l.WatchThread(tid, "ns/vmi")                   // a vCPU thread (host tid) of a VMI
//	l.ForgetThread(tid)                            // its final figures come with the next reads
//	l.ReadLockCounts()     // []LockCounts: per thread, by source, since the previous call
//	l.ReadCoScheduling()   // []CoSchedule: per pair {SMT, LLC, Handovers}, since the previous call
//	l.AttachSampler(perfFD, stream)                // bin this perf event's samples in the kernel
//	l.DetachSampler(perfFD)                        // before closing perfFD
//	l.ReadSampleBins()     // SampleBins: IP bins (drained) and per-slot timelines
//	l.ReadStats()          // what the programs had to drop
//	kernel.BusLockSignal(l.Status(), pmuHasBusLockEvent, pmuReason)
//
// Load does not fail because a hook is missing: that program is reported
// (ProgramStatus.Reason names the hook and why, e.g. "hook missing:
// handle_guest_split_lock: fentry: the kernel refuses it ...") and the
// others work. It fails when eBPF is unusable or a map cannot be created,
// and then leaves nothing loaded. All methods are safe for concurrent use.
//
// Thread ids are host (root PID namespace) ids: the agent runs with
// hostPID. Reads return deltas since the previous read of the same kind,
// so the agent calls each at its interval.
//
// # Bounds
//
// Every map is bounded; what happens when one is full:
//
//   - threads and lock_counts: Options.MaxThreads (4096). WatchThread
//     returns ErrTableFull; lock counts of a new thread are dropped
//     (Stats.LockTableFull). Counts of dead unwatched threads are evicted
//     at reads.
//   - pairs: Options.MaxPairs (65536) pairs active within one read
//     interval; pairs idle for a whole interval are evicted. New pairs are
//     dropped when full (Stats.PairTableFull).
//   - ip_bins: Options.MaxIPBins (65536) bins per read interval (reads
//     drain them); samples of new bins are dropped when full
//     (Stats.IPBinTableFull), the timelines still count them.
//   - timelines: Options.MaxTimelines (4096) (thread, stream) pairs; idle
//     ones are evicted at reads. Each holds 256 slots of
//     Options.SampleSlot (4ms): read at least every 256 slots or the
//     oldest are lost (Timeline.LostSlots).
//   - samplers: Options.MaxSamplers (8192) perf events.
//   - watched_bits (512 KiB, one bit per possible thread id), cpu_state
//     and cpu_peers (one entry per possible CPU, 256 peers per CPU) are
//     fixed.
//
// Package kernel/probe answers which hooks and program types the node has,
// for the heartbeat and `sidewatch-agent probe`.
package kernel
