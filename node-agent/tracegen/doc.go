// Package tracegen generates labelled sidewatch traces (format v1) for
// tests and for the accuracy evaluation: covert channels over the LLC and
// over bus locks, Prime+Probe and Flush+Reload attacks on a victim's
// crypto phases, and benign neighbours that are bursty or periodic on their
// own (compilers, databases, video encoders, memory-bandwidth benchmarks,
// training loops, cron-like jobs, monitoring agents, legacy split-lock
// users), all with counter noise, OS background activity and co-runner
// interference.
//
// The simulation runs in 0.5 ms ticks. Each VMI's workload gives, per tick,
// how busy it is and its per-instruction cache behaviour; co-runners'
// LLC pressure raises every VMI's miss rate in proportion to its cache
// sensitivity and bus locks stall every VMI's memory accesses. Counters
// accumulate per vCPU and are written at each VMI's read times; overflow
// samples are written when a counter's running total crosses a multiple of
// its sample period, exactly as the PMU does, with a guest RIP drawn from
// the code the VMI was running (guest_region lines map those addresses).
//
// Ground truth travels in the trace itself as "# truth: {json}" metadata,
// which detectors ignore.
package tracegen
