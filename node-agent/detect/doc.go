// Package detect is sidewatch's detection engine: three detectors that turn
// per-vCPU counter values and overflow samples into detections of cross-VM
// covert channels and side-channel attacks. It is pure Go with no
// Kubernetes client code; the node agent feeds it live and `sidewatch
// analyze` replays traces (docs/trace-format.md) through the very same
// Engine.
//
// # Feeding the engine
//
//	eng, err := detect.New(detect.ConfigFromPolicy(spec)) // spec.Default() is applied
//	id := eng.Stream(detect.StreamKey{Node: "n1", VMI: detect.VMIRef{Namespace: "ns", Name: "vm"}, VCPU: 0})
//	for each counter read or overflow sample of that vCPU {
//		for _, d := range eng.Observe(detect.Observation{TimeNS: t, Stream: id, Event: trace.LLCMisses, Value: n}) {
//			// d is complete; copy it before the next call
//		}
//	}
//	eng.Advance("n1", now) // when a node is quiet, so its windows still close
//
// An Observation is exactly what a trace row carries: a counter's count
// over the interval that ends at TimeNS, or one overflow sample (Value is
// the guest RIP, 0 when unknown). Stream registers a vCPU once (that
// allocates); Observe never allocates in the steady state. Rows of one
// vCPU must come in time order; vCPUs of a node may be up to
// Config.Lateness apart. The engine is not safe for concurrent use.
//
// # Analyses and causality
//
// Each node is analysed at every multiple of HopNS (half the
// shortest detector window, on interval boundaries) once the node's newest
// observation is Lateness past it. An analysis at time B looks only at data
// before B; a detection emitted by it carries TimeNS = B (the end of the
// window that completed the evidence) and FirstCrossingNS, the end of the
// first window of the episode whose evidence crossed the thresholds. A
// detection is emitted when the evidence held in Config.Persistence
// consecutive analyses, then again once per window while it holds (Repeat
// counts those); an episode ends after a window without evidence.
//
// # The detectors
//
// Cache oscillation (CacheCovertChannel, after CC-Hunter). Per VMI, an event
// train of LLC misses: fine-grained from overflow samples (up to
// MaxFineBins bins per window, in three octaves of resolution so that
// sampling noise averages out for slower channels) and coarse from the
// interval counts. Each train is searched for an oscillation with a period
// in [minPeriod, min(maxPeriod, window/minRepetitions)]: the normalised
// autocorrelation peak (computed by FFT), and the phase coherence of the
// train's rising and falling edges on a clock of that period, which finds
// a channel's bit clock even when random data bits leave the
// autocorrelation flat; coherence is debiased for the number of edges and
// frequencies searched. Both are 0..1 and compared with minAutocorrelation.
// Two VMIs on one node form a channel when both oscillate at the same
// period (or one at twice the other), their trains follow each other within
// half a period (cross-correlation >= minAutocorrelation), and they carry
// the same data: the activity per cycle changes from cycle to cycle in step
// at both ends, with a partial correlation >= minAutocorrelation once any
// single other VMI, the rest of the node, a bus-lock sender, or a strict
// alternation of busy and quiet cycles (a job on twice the period) is
// accounted for, and significant over the number of cycles. That last test
// is what separates a channel from two timers or video encoders that
// merely share a period, and from co-runner interference. A pattern that
// never changes (a pure 1010 carrier) carries no data and is by design
// indistinguishable from synchronised timers. Roles come from which train
// leads. VMIs that send bus locks are left to the bus-lock detector.
//
// Bus locks (BusLockCovertChannel). Per VMI, bursts of bus or split locks
// (the larger of the two counters, which may count the same locks): runs of
// intervals at or above minBurstRate, or clusters of lock samples split by
// the largest jump in their gaps. The burst starts must sit on a bit
// clock: the period with the highest phase coherence (Rayleigh statistic),
// preferring the longest period that fits; regularity is 1 - CV of the
// starts on that clock, normalised so that random starts score about 0. A
// channel needs minBursts bursts, regularity >= minRegularity, a
// significant Rayleigh Z and a clock that explains the bursts. Receivers
// are ranked by how their cycles per instruction follow the sender's lock
// rate (bus locks stall every memory access on the node); up to three are
// named, the first as Receiver.
//
// Slow channels and the long horizon. A channel whose bit period is long
// against the window (a 250 ms NRZ channel puts 40 bits in a 10 s window,
// and random data makes far fewer edges or bursts than that) shows too few
// cycles in one window for its clock or its data coupling to be told from
// chance. Both covert-channel detectors therefore also run their tests over
// Config.LongHorizon windows (default 4) on coarser sample rings (4096 bins
// over the horizon), looking there only for periods with fewer than 64
// cycles per window; faster clocks are judged on the window alone. Over the
// long horizon the data coupling of two ends is a rank correlation, so that
// one large event shared through the cache (a checkpoint, a load spike)
// cannot carry it, and each end's activity per cycle must vary by at least
// 30% (ranks would make background wobble look orderly); a slow bus-lock
// clock, resting on a dozen or two bursts that bursty software can match by
// chance, is reported only with a receiver whose stalls follow it.
// Evidence.WindowNS says which span the evidence covers.
//
// Crypto correlation (CacheSideChannel, after CloudRadar). For each
// protected VMI, an interval is a sensitive phase when enough of its
// samples fall in sensitive code (Signature.Libraries/Symbols, resolved
// through guest regions: trace guest_region lines, AddGuestRegion, or a
// Resolver) or when its counters match a learned Profile. Every co-located
// VMI keeps an online baseline of its cache behaviour (LLC misses per
// kilo-instruction, or per interval without instruction counts) over
// baselineWindow, as a decaying histogram with a robust median and MAD. A
// suspect is a VMI whose robust z-score moves with the victim's sensitive
// phases: correlation >= minCorrelation and a shift between sensitive and
// quiet intervals of at least anomalyThreshold (up for Prime+Probe, down
// for Flush+Reload), and that shift shows (by at least half the threshold)
// in at least three of every four sensitive phases: an attack works on
// every run of the victim's sensitive code, while a neighbour's own bursts
// (garbage collections, checkpoints) coincide with some phases only. The
// window needs at least two separate sensitive phases.
//
// # Victims and protection
//
// Only a protected VMI can be a victim. SetProtection protects a VMI (the
// agent calls it with the governing policy's name and signatures, see
// ProtectionFromPolicy); Config.ProtectionFor decides for VMIs met for the
// first time; Config.DefaultProtection protects everything else (sidewatch
// analyze without --policy, where every VMI is protected).
//
//   - Side channels: the victim is the protected VMI running sensitive code;
//     suspects (role Attacker) are co-located VMIs, protected or not.
//   - Covert channels: both ends collude. The victim is the protected end,
//     the one sidewatch would move to break the channel; the other end is
//     the suspect (role Sender or Receiver when the detector can tell).
//     When both ends are protected the victim is the sender (its data is
//     leaving), or the first by namespace/name when roles are unknown; the
//     receiver is still named as suspect, so one migration breaks the
//     channel and placement keeps the two apart. When no end is protected,
//     nothing is emitted (Stats.Unprotected counts it).
//
// # Detections
//
// A Detection carries the type, detector, node, victim, suspects with
// scores and roles, a score 0..1 and its severity
// (v1alpha1.SeverityForScore), the evidence figures (Evidence) and, bounded
// to a few hundred points per curve, the detector's own series for plots
// (Series: autocorrelation around the peak and the peak lag,
// cross-correlation of the two ends, burst starts, the victim's sensitive
// phases and the suspect's anomaly per interval, event-rate trains).
// FindingSpec converts it to a ThreatFinding spec.
//
// # Memory
//
// State is bounded: per vCPU stream a few dozen bytes; per VMI a ring of
// interval bins (over the long horizon), the fine sample rings of the
// window and of the long horizon, a fixed histogram baseline and one curve
// (StateSize reports the bytes). Guest regions are capped at
// MaxRegionsPerVMI per VMI.
package detect
