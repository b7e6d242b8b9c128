package detect

import (
	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// VMIRef names a VMI cluster-wide.
type VMIRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (r VMIRef) String() string { return r.Namespace + "/" + r.Name }

// StreamKey names one vCPU of one VMI on one node: the unit the collector
// counts and samples.
type StreamKey struct {
	Node string
	VMI  VMIRef
	VCPU int32
}

// StreamID is the engine's handle for a StreamKey (Engine.Stream).
type StreamID int32

// Observation is what a trace row carries, with the stream as a handle.
// It is a small value: passing it does not allocate.
type Observation struct {
	// TimeNS is when the interval ended (counters) or the counter
	// overflowed (samples), in nanoseconds.
	TimeNS int64
	Stream StreamID
	// Event is a counter or a sample event (trace.Event).
	Event trace.Event
	// Value is the count during the interval that ends at TimeNS for a
	// counter, the sampled guest instruction pointer (0 when unknown) for a
	// sample.
	Value uint64
}

// Role is what a suspect (or the victim) does in an attack.
type Role string

// Roles, as in v1alpha1.Suspect.Role.
const (
	RoleSender   Role = "Sender"
	RoleReceiver Role = "Receiver"
	RoleAttacker Role = "Attacker"
	RoleUnknown  Role = "Unknown"
)

// Detector names and versions, as written to ThreatFinding spec.detector.
const (
	DetectorCacheOscillation  = "cache-oscillation/v1"
	DetectorBusLock           = "bus-lock/v1"
	DetectorCryptoCorrelation = "crypto-correlation/v1"
)

// Suspect is a VMI the evidence points at.
type Suspect struct {
	VMIRef
	// Score (0..1) is how strongly the evidence points at this VMI.
	Score float64 `json:"score"`
	Role  Role    `json:"role,omitempty"`
}

// Detection is one emission of a detector. The engine emits a detection
// when evidence has held for Config.Persistence consecutive analyses (a new
// episode, Repeat 0) and again once per detector window while it keeps
// holding (Repeat 1, 2, ...). An episode ends after a full window without
// evidence; the next one starts a new episode.
type Detection struct {
	// TimeNS is the trace time at which the engine emitted the detection:
	// the end of the analysis window that completed the evidence. It only
	// depends on data at or before TimeNS.
	TimeNS int64 `json:"time_ns"`
	// FirstCrossingNS is the end of the first window of this episode whose
	// evidence crossed the detector's thresholds.
	FirstCrossingNS int64               `json:"first_crossing_ns"`
	Type            v1alpha1.ThreatType `json:"type"`
	Detector        string              `json:"detector"`
	Node            string              `json:"node"`
	// Victim is the protected VMI the finding is about: for a side channel
	// the VMI running sensitive code, for a covert channel the protected
	// end (see the package documentation).
	Victim VMIRef `json:"victim"`
	// VictimRole is the victim's own role in a covert channel (Sender or
	// Receiver), when the detector can tell.
	VictimRole Role `json:"victim_role,omitempty"`
	// Policy is Protection.Policy of the victim.
	Policy string `json:"policy,omitempty"`
	// Suspects, highest score first.
	Suspects []Suspect `json:"suspects"`
	// Score (0..1) is the detector's confidence.
	Score    float64           `json:"score"`
	Severity v1alpha1.Severity `json:"severity"`
	// Repeat counts the emissions of this episode before this one.
	Repeat   int      `json:"repeat"`
	Evidence Evidence `json:"evidence"`
	// Series holds the detector's own figures for plots; bounded in size
	// (at most a few hundred points per curve).
	Series *Series `json:"series,omitempty"`
}

// Evidence holds the figures that back a detection. Which are set depends
// on the type.
type Evidence struct {
	// WindowNS is the analysis window.
	WindowNS int64 `json:"window_ns"`
	// TrainBinNS is the resolution of the event trains analysed.
	TrainBinNS int64 `json:"train_bin_ns,omitempty"`
	// PeriodNS is one oscillation or burst cycle.
	PeriodNS int64 `json:"period_ns,omitempty"`
	// BitsPerSecond is the channel's bit rate, one bit per period.
	BitsPerSecond float64 `json:"bits_per_second,omitempty"`
	// AutocorrelationPeak is the normalised autocorrelation of the
	// victim's train at the period.
	AutocorrelationPeak float64 `json:"autocorrelation_peak,omitempty"`
	// Oscillation (0..1) is the weaker end's oscillation strength: the
	// larger of its autocorrelation peak and the phase coherence of its
	// train's transitions on the period.
	Oscillation float64 `json:"oscillation,omitempty"`
	// Correlation is between the two ends' trains (covert channels) or
	// between the suspect's anomaly and the victim's sensitive phases.
	Correlation float64 `json:"correlation,omitempty"`
	// LagNS is how far the second end's train lags the first's.
	LagNS int64 `json:"lag_ns,omitempty"`
	// Bursts counts lock bursts in the window; BurstsPerSecond is their
	// rate, LocksPerSecond the lock rate inside bursts, Regularity
	// 1 - CV of the burst starts on the bit clock.
	Bursts          int     `json:"bursts,omitempty"`
	BurstsPerSecond float64 `json:"bursts_per_second,omitempty"`
	LocksPerSecond  float64 `json:"locks_per_second,omitempty"`
	Regularity      float64 `json:"regularity,omitempty"`
	// AnomalyScore is how far, in robust standard deviations, the top
	// suspect's cache behaviour moved from its baseline during the
	// victim's sensitive phases (negative: fewer misses).
	AnomalyScore float64 `json:"anomaly_score,omitempty"`
	// Signature names the victim signature that recognised sensitive code;
	// SensitiveFraction is the share of the window it covered.
	Signature         string  `json:"signature,omitempty"`
	SensitiveFraction float64 `json:"sensitive_fraction,omitempty"`
	// Samples counts the overflow samples behind the detection.
	Samples int64 `json:"samples,omitempty"`
	// EventRates are the mean counter rates of the VMIs involved.
	EventRates []EventRate `json:"event_rates,omitempty"`
}

// EventRate is one VMI's mean rate of one counter over the window.
type EventRate struct {
	VMI       string  `json:"vmi"`
	Event     string  `json:"event"`
	PerSecond float64 `json:"per_second"`
}

// Series is what a report needs to plot a detection. Every slice is bounded
// (MaxSeriesPoints values, MaxSeriesTrains trains).
type Series struct {
	// Autocorrelation of the victim's train around the peak, and the lag
	// of the peak.
	Autocorrelation *Curve `json:"autocorrelation,omitempty"`
	PeakLagNS       int64  `json:"peak_lag_ns,omitempty"`
	// CrossCorrelation between the two ends of a covert channel, for lags
	// within half a period.
	CrossCorrelation *Curve `json:"cross_correlation,omitempty"`
	// BurstStartsNS are the starts of the lock bursts in the window; their
	// differences are the burst periods.
	BurstStartsNS []int64 `json:"burst_starts_ns,omitempty"`
	// Sensitive is the victim's sensitive-phase indicator per interval of
	// the window (1 = sensitive code ran), aligned with Trains.
	Sensitive *Train `json:"sensitive,omitempty"`
	// Anomaly is the top suspect's robust z-score per interval.
	Anomaly *Train `json:"anomaly,omitempty"`
	// Trains are event-rate series (per second) of the VMIs involved.
	Trains []Train `json:"trains,omitempty"`
}

// Bounds of Series.
const (
	MaxSeriesPoints = 256
	MaxSeriesTrains = 8
)

// Curve is a function of lag.
type Curve struct {
	LagsNS []int64   `json:"lags_ns"`
	Values []float32 `json:"values"`
}

// Train is a regularly sampled series.
type Train struct {
	VMI     string    `json:"vmi,omitempty"`
	Event   string    `json:"event,omitempty"`
	StartNS int64     `json:"start_ns"`
	StepNS  int64     `json:"step_ns"`
	Values  []float32 `json:"values"`
}
