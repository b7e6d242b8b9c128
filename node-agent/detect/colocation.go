package detect

import (
	"fmt"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Colocation is how much a suspect's and a victim's vCPU threads shared
// hardware over a span: measured on the node (kernel/ sched_switch
// program), not by the engine, which sees counters only.
type Colocation struct {
	// WindowNS is the span measured; 0 means not measured.
	WindowNS int64
	// SharedLLCNS is how long vCPUs of both ran at once on CPUs sharing a
	// last-level cache (SMT siblings included), SMTSiblingNS how long on
	// SMT siblings of one core.
	SharedLLCNS, SMTSiblingNS int64
	// Handovers counts how often one took a CPU over right after the
	// other ran there.
	Handovers int64
}

// Contact thresholds of ColocationWeight. A cache channel moves a bit per
// period through lines both ends touch; over a detection window of tens of
// seconds, 1% of the window running at once next to each other (hundreds
// of milliseconds) or a handful of turns on one CPU is enough hardware
// sharing for a channel to exist, so these are the least contact that
// counts fully, not a tuning of scores.
const (
	fullContactFraction = 0.01
	fullHandovers       = 10
	// noContactWeight is the weight of a suspect that never shared the
	// hardware: not 0, because the measurement has limits (threads the
	// agent registered late, pairs dropped at the table's bound).
	noContactWeight = 0.25
)

// ColocationWeight is the factor (0..1) by which a suspect's score is
// multiplied given its co-scheduling with the victim, and why. A cache
// attack needs the cache: the two must have run at once on CPUs sharing a
// last-level cache, or taken turns on one CPU. A bus-lock channel needs
// only the memory bus, which every core shares, so co-scheduling does not
// weigh on it. Unmeasured co-scheduling weighs nothing (1).
func ColocationWeight(t v1alpha1.ThreatType, c Colocation) (float64, string) {
	if c.WindowNS <= 0 {
		return 1, "co-scheduling not measured"
	}
	if t == v1alpha1.BusLockCovertChannel {
		return 1, "bus locks stall every core: no cache sharing needed"
	}
	share := float64(max(c.SharedLLCNS, c.SMTSiblingNS, 0)) / float64(c.WindowNS)
	contact := max(share/fullContactFraction, float64(c.Handovers)/fullHandovers)
	if contact >= 1 {
		return 1, fmt.Sprintf("shared a last-level cache %.1f%% of the window, %d handovers on one CPU", 100*min(share, 1), c.Handovers)
	}
	w := noContactWeight + (1-noContactWeight)*contact
	if contact == 0 {
		return w, "never ran at once on CPUs sharing a last-level cache nor took turns on one CPU in the window: a cache attack between them is implausible"
	}
	return w, fmt.Sprintf("little hardware sharing: a last-level cache %.2f%% of the window, %d handovers", 100*share, c.Handovers)
}
