package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Default fills every unset field with the value the CRD schema defaults it
// to. The API server applies the schema's defaults to stored objects; this
// gives the same result for policies read from files (sidewatch analyze
// --policy) or built in Go. TestGoDefaultsMatchSchema keeps the two equal.
func (s *SideChannelPolicySpec) Default() {
	c := &s.Collection
	setDuration(&c.Interval, 100*time.Millisecond)
	if len(c.Events) == 0 {
		c.Events = append([]CounterEvent(nil), AllCounterEvents...)
	}
	if c.SampledEvents == nil {
		c.SampledEvents = []CounterEvent{EventLLCMisses, EventBusLocks}
	}
	setInt64(&c.SamplePeriod, 10000)

	co := &s.Detectors.CacheOscillation
	setBool(&co.Enabled, true)
	setDuration(&co.Window, 10*time.Second)
	setFloat(&co.MinAutocorrelation, 0.5)
	setInt32(&co.MinRepetitions, 6)
	setDuration(&co.MinPeriod, time.Millisecond)
	setDuration(&co.MaxPeriod, 5*time.Second)

	bl := &s.Detectors.BusLock
	setBool(&bl.Enabled, true)
	setDuration(&bl.Window, 10*time.Second)
	setInt64(&bl.MinBurstRate, 500)
	setInt32(&bl.MinBursts, 5)
	setFloat(&bl.MinRegularity, 0.6)

	cc := &s.Detectors.CryptoCorrelation
	setBool(&cc.Enabled, true)
	setDuration(&cc.Window, 10*time.Second)
	setDuration(&cc.BaselineWindow, 5*time.Minute)
	setFloat(&cc.AnomalyThreshold, 4)
	setFloat(&cc.MinCorrelation, 0.6)

	r := &s.Response
	if r.Action == "" {
		r.Action = ActionAlert
	}
	if r.MinSeverity == "" {
		r.MinSeverity = SeverityHigh
	}
	setDuration(&r.Cooldown, 30*time.Minute)
	setInt32(&r.MaxConcurrentMigrations, 2)
	setInt32(&r.MaxMigrationAttempts, 3)
	setDuration(&r.RetryBackoff, 30*time.Second)
}

func setDuration(p **metav1.Duration, d time.Duration) {
	if *p == nil {
		*p = &metav1.Duration{Duration: d}
	}
}

func setBool(p **bool, v bool) {
	if *p == nil {
		*p = &v
	}
}

func setFloat(p *float64, v float64) {
	if *p == 0 {
		*p = v
	}
}

func setInt32(p *int32, v int32) {
	if *p == 0 {
		*p = v
	}
}

func setInt64(p *int64, v int64) {
	if *p == 0 {
		*p = v
	}
}

// DurationOr returns d's value, or def when d is unset.
func DurationOr(d *metav1.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.Duration
}

// IsEnabled reports whether an optional enabled flag is on; unset means on.
func IsEnabled(b *bool) bool { return b == nil || *b }
