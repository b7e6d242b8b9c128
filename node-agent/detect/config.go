package detect

import (
	"fmt"
	"time"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// Config tunes the engine. Build it with ConfigFromPolicy (or
// DefaultConfig) and adjust; New validates it.
type Config struct {
	// Interval is the counter read interval: the resolution of the coarse
	// event trains.
	Interval time.Duration
	// SamplePeriod[c] is the overflow period of counter c's samples; 0
	// falls back to DefaultSamplePeriod.
	SamplePeriod        [trace.NumCounters + 1]int64
	DefaultSamplePeriod int64
	// Lateness is how long the engine waits for late rows of other vCPUs
	// before it analyses a window: a row more than Lateness older than the
	// newest row of its node misses the analyses already done.
	Lateness time.Duration
	// Persistence is how many consecutive analyses must show the evidence
	// before a detection is emitted.
	Persistence int
	// MaxFineBins bounds the fine (sample-based) trains per window.
	MaxFineBins int
	// LongHorizon is how many detector windows the covert-channel
	// detectors also look back for slow channels, 0 or 1 for none. A
	// channel whose bit period is long against the window shows too few
	// cycles in one window to be told from chance; over a longer horizon
	// the same tests see enough of them (see the package documentation).
	LongHorizon int

	CacheOscillation CacheOscillationConfig
	BusLock          BusLockConfig
	SideChannel      SideChannelConfig

	// ProtectionFor, when set, decides the protection of a VMI the engine
	// meets for the first time and that SetProtection did not cover (nil:
	// not protected). sidewatch analyze evaluates a policy's selectors
	// here.
	ProtectionFor func(VMIRef) *Protection
	// DefaultProtection, when set, protects every VMI that neither
	// SetProtection nor ProtectionFor protects (sidewatch analyze without
	// --policy).
	DefaultProtection *Protection
}

// CacheOscillationConfig mirrors v1alpha1.CacheOscillationSpec.
type CacheOscillationConfig struct {
	Enabled            bool
	Window             time.Duration
	MinAutocorrelation float64
	MinRepetitions     int
	MinPeriod          time.Duration
	MaxPeriod          time.Duration
}

// BusLockConfig mirrors v1alpha1.BusLockSpec.
type BusLockConfig struct {
	Enabled       bool
	Window        time.Duration
	MinBurstRate  float64
	MinBursts     int
	MinRegularity float64
}

// SideChannelConfig mirrors v1alpha1.CryptoCorrelationSpec.
type SideChannelConfig struct {
	Enabled          bool
	Window           time.Duration
	BaselineWindow   time.Duration
	AnomalyThreshold float64
	MinCorrelation   float64
	// MinSensitiveFraction is the share of a VMI's samples in an interval
	// that must fall in sensitive code for the interval to count as a
	// sensitive phase.
	MinSensitiveFraction float64
}

// DefaultConfig is ConfigFromPolicy of an empty policy.
func DefaultConfig() Config { return ConfigFromPolicy(v1alpha1.SideChannelPolicySpec{}) }

// ConfigFromPolicy builds the engine settings of a policy. It defaults a
// copy of spec first (spec.Default), so unset fields get the CRD defaults.
func ConfigFromPolicy(spec v1alpha1.SideChannelPolicySpec) Config {
	s := *spec.DeepCopy()
	s.Default()
	d := s.Detectors
	cfg := Config{
		Interval:            s.Collection.Interval.Duration,
		DefaultSamplePeriod: s.Collection.SamplePeriod,
		Lateness:            time.Second,
		Persistence:         2,
		MaxFineBins:         16384,
		LongHorizon:         4,
		CacheOscillation: CacheOscillationConfig{
			Enabled:            v1alpha1.IsEnabled(d.CacheOscillation.Enabled),
			Window:             d.CacheOscillation.Window.Duration,
			MinAutocorrelation: d.CacheOscillation.MinAutocorrelation,
			MinRepetitions:     int(d.CacheOscillation.MinRepetitions),
			MinPeriod:          d.CacheOscillation.MinPeriod.Duration,
			MaxPeriod:          d.CacheOscillation.MaxPeriod.Duration,
		},
		BusLock: BusLockConfig{
			Enabled:       v1alpha1.IsEnabled(d.BusLock.Enabled),
			Window:        d.BusLock.Window.Duration,
			MinBurstRate:  float64(d.BusLock.MinBurstRate),
			MinBursts:     int(d.BusLock.MinBursts),
			MinRegularity: d.BusLock.MinRegularity,
		},
		SideChannel: SideChannelConfig{
			Enabled:              v1alpha1.IsEnabled(d.CryptoCorrelation.Enabled),
			Window:               d.CryptoCorrelation.Window.Duration,
			BaselineWindow:       d.CryptoCorrelation.BaselineWindow.Duration,
			AnomalyThreshold:     d.CryptoCorrelation.AnomalyThreshold,
			MinCorrelation:       d.CryptoCorrelation.MinCorrelation,
			MinSensitiveFraction: 0.2,
		},
	}
	return cfg
}

// Validate reports the first setting that cannot work, naming it.
func (c *Config) Validate() error {
	if c.Interval < time.Millisecond {
		return fmt.Errorf("interval %v: must be at least 1ms", c.Interval)
	}
	if c.DefaultSamplePeriod <= 0 {
		return fmt.Errorf("samplePeriod %d: must be positive", c.DefaultSamplePeriod)
	}
	if c.Lateness < 0 {
		return fmt.Errorf("lateness %v: must not be negative", c.Lateness)
	}
	if c.Persistence < 1 {
		return fmt.Errorf("persistence %d: must be at least 1", c.Persistence)
	}
	if c.MaxFineBins < 256 || c.MaxFineBins > 1<<20 {
		return fmt.Errorf("maxFineBins %d: must be between 256 and 1048576", c.MaxFineBins)
	}
	if c.LongHorizon < 0 || c.LongHorizon > 16 {
		return fmt.Errorf("longHorizon %d: must be between 0 (off) and 16 windows", c.LongHorizon)
	}
	for _, w := range []struct {
		name string
		on   bool
		d    time.Duration
	}{
		{"detectors.cacheOscillation.window", c.CacheOscillation.Enabled, c.CacheOscillation.Window},
		{"detectors.busLock.window", c.BusLock.Enabled, c.BusLock.Window},
		{"detectors.cryptoCorrelation.window", c.SideChannel.Enabled, c.SideChannel.Window},
	} {
		if w.on && w.d < 10*c.Interval {
			return fmt.Errorf("%s %v: must hold at least 10 intervals of %v", w.name, w.d, c.Interval)
		}
		if w.on && w.d > 10*time.Minute {
			return fmt.Errorf("%s %v: must be at most 10m", w.name, w.d)
		}
	}
	co := c.CacheOscillation
	if co.Enabled {
		if co.MinPeriod <= 0 || co.MaxPeriod <= co.MinPeriod {
			return fmt.Errorf("detectors.cacheOscillation: minPeriod %v must be positive and shorter than maxPeriod %v", co.MinPeriod, co.MaxPeriod)
		}
		if co.MinRepetitions < 2 {
			return fmt.Errorf("detectors.cacheOscillation.minRepetitions %d: must be at least 2", co.MinRepetitions)
		}
		if co.MinAutocorrelation <= 0 || co.MinAutocorrelation > 1 {
			return fmt.Errorf("detectors.cacheOscillation.minAutocorrelation %v: must be in (0,1]", co.MinAutocorrelation)
		}
	}
	bl := c.BusLock
	if bl.Enabled && (bl.MinBursts < 3 || bl.MinBurstRate <= 0 || bl.MinRegularity < 0 || bl.MinRegularity > 1) {
		return fmt.Errorf("detectors.busLock: minBursts %d must be >= 3, minBurstRate %v > 0, minRegularity %v in [0,1]", bl.MinBursts, bl.MinBurstRate, bl.MinRegularity)
	}
	sc := c.SideChannel
	if sc.Enabled {
		if sc.BaselineWindow <= sc.Window {
			return fmt.Errorf("detectors.cryptoCorrelation.baselineWindow %v: must be longer than window %v", sc.BaselineWindow, sc.Window)
		}
		if sc.AnomalyThreshold <= 0 || sc.MinCorrelation < 0 || sc.MinCorrelation > 1 {
			return fmt.Errorf("detectors.cryptoCorrelation: anomalyThreshold %v must be > 0 and minCorrelation %v in [0,1]", sc.AnomalyThreshold, sc.MinCorrelation)
		}
		if sc.MinSensitiveFraction <= 0 || sc.MinSensitiveFraction > 1 {
			return fmt.Errorf("minSensitiveFraction %v: must be in (0,1]", sc.MinSensitiveFraction)
		}
	}
	return nil
}

func (c *Config) samplePeriod(counter trace.Event) float64 {
	if p := c.SamplePeriod[counter.Counter()]; p > 0 {
		return float64(p)
	}
	return float64(c.DefaultSamplePeriod)
}

// ApplyTraceMetadata lets what a trace declares about itself (its interval
// and sample periods) override the policy's collection settings: the trace
// describes the data as it was collected.
func (c *Config) ApplyTraceMetadata(md trace.Metadata) {
	if md.Interval > 0 {
		c.Interval = md.Interval
	}
	for e, p := range md.SamplePeriod {
		if p > 0 {
			c.SamplePeriod[e] = p
		}
	}
}

// ProfileLoader returns the profile stored in the named ConfigMap's
// "profile.json" key (the agent), or in a local file (sidewatch analyze).
type ProfileLoader func(configMap string) (*Profile, error)

// ProtectionFromPolicy is the protection a policy gives the VMIs it
// governs: its name and its compiled signatures (the built-in crypto
// library signature when it lists none). load resolves profileConfigMap
// references; it may be nil when no signature uses one.
func ProtectionFromPolicy(name string, spec v1alpha1.SideChannelPolicySpec, load ProfileLoader) (*Protection, error) {
	p := &Protection{Policy: name}
	for i, s := range spec.Detectors.CryptoCorrelation.Signatures {
		sig := Signature{Name: s.Name, Libraries: s.Libraries, Symbols: s.Symbols}
		if s.ProfileConfigMap != "" {
			if load == nil {
				return nil, fmt.Errorf("detectors.cryptoCorrelation.signatures[%d] (%s): profileConfigMap %q needs a profile source", i, s.Name, s.ProfileConfigMap)
			}
			prof, err := load(s.ProfileConfigMap)
			if err != nil {
				return nil, fmt.Errorf("detectors.cryptoCorrelation.signatures[%d] (%s): profileConfigMap %q: %w", i, s.Name, s.ProfileConfigMap, err)
			}
			sig.Profile = prof
		}
		p.Signatures = append(p.Signatures, sig)
	}
	if len(p.Signatures) == 0 {
		p.Signatures = []Signature{BuiltinCryptoSignature()}
	}
	return p, nil
}
