package detect

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// ProfileAPIVersion identifies the profile JSON format.
const ProfileAPIVersion = "sidewatch.io/profile/v1"

// Profile is a counter signature of sensitive code, learned by `sidewatch
// profile` from a trace of a VMI running it, and stored as JSON in a
// ConfigMap's "profile.json" key (v1alpha1.Signature.ProfileConfigMap).
//
// An interval of a VMI matches when its feature vector (computed from the
// VMI's counters summed over its vCPUs, see ProfileFeatures) lies within
// MaxDistance of Sensitive (root mean square of per-feature z-scores) and,
// when Background is set, nearer to Sensitive than to Background.
type Profile struct {
	APIVersion  string `json:"apiVersion"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// IntervalNS is the counter interval the profile was learned at;
	// features are per-instruction ratios, so other intervals work too.
	IntervalNS int64 `json:"interval_ns"`
	// Features names the feature of each position of the vectors below.
	Features []string `json:"features"`
	// Sensitive and Background describe the training intervals with and
	// without sensitive code.
	Sensitive  FeatureStats  `json:"sensitive"`
	Background *FeatureStats `json:"background,omitempty"`
	// MaxDistance is the largest RMS z-distance that still matches.
	MaxDistance float64 `json:"max_distance"`
	// MinInstructions is the fewest instructions an interval needs to be
	// judged at all; idle intervals never match.
	MinInstructions float64 `json:"min_instructions"`
	// Training says where the profile came from and how well it separated
	// its own training data.
	Training ProfileTraining `json:"training"`
}

// FeatureStats are per-feature means and standard deviations.
type FeatureStats struct {
	Mean []float64 `json:"mean"`
	Std  []float64 `json:"std"`
}

// ProfileTraining records a profile's provenance and training accuracy.
type ProfileTraining struct {
	Trace              string  `json:"trace,omitempty"`
	VMI                string  `json:"vmi,omitempty"`
	Labels             string  `json:"labels,omitempty"`
	Intervals          int     `json:"intervals"`
	SensitiveIntervals int     `json:"sensitive_intervals"`
	TruePositiveRate   float64 `json:"true_positive_rate"`
	FalsePositiveRate  float64 `json:"false_positive_rate"`
}

// The profile features. Each is computed from one interval's counters.
var profileFeatureNames = []string{"ipc", "llc_mpki", "llc_refs_pki", "l1d_mpki", "llc_miss_ratio"}

// ProfileFeatures lists the feature names a profile may use.
func ProfileFeatures() []string { return slices.Clone(profileFeatureNames) }

// IntervalCounters are one VMI's counter totals over one interval.
type IntervalCounters [trace.NumCounters + 1]float64

// feature returns feature i of c, and whether the counters it needs are
// present.
func (c *IntervalCounters) feature(i int) (float64, bool) {
	ins := c[trace.Instructions]
	switch profileFeatureNames[i] {
	case "ipc":
		if ins <= 0 || c[trace.Cycles] <= 0 {
			return 0, false
		}
		return math.Log(ins / c[trace.Cycles]), true
	case "llc_mpki":
		if ins <= 0 {
			return 0, false
		}
		return math.Log1p(1000 * c[trace.LLCMisses] / ins), true
	case "llc_refs_pki":
		if ins <= 0 || c[trace.LLCReferences] <= 0 {
			return 0, false
		}
		return math.Log1p(1000 * c[trace.LLCReferences] / ins), true
	case "l1d_mpki":
		if ins <= 0 || c[trace.L1DMisses] <= 0 {
			return 0, false
		}
		return math.Log1p(1000 * c[trace.L1DMisses] / ins), true
	case "llc_miss_ratio":
		if c[trace.LLCReferences] <= 0 {
			return 0, false
		}
		return c[trace.LLCMisses] / (c[trace.LLCReferences] + 1), true
	}
	return 0, false
}

// compiled resolves the profile's feature names to indexes.
func (p *Profile) featureIndex() ([]int, error) {
	idx := make([]int, len(p.Features))
	for i, f := range p.Features {
		j := slices.Index(profileFeatureNames, f)
		if j < 0 {
			return nil, fmt.Errorf("feature %q is unknown (known: %v)", f, profileFeatureNames)
		}
		idx[i] = j
	}
	return idx, nil
}

// Validate checks a profile read from JSON.
func (p *Profile) Validate() error {
	if p.APIVersion != ProfileAPIVersion {
		return fmt.Errorf("apiVersion %q: want %q", p.APIVersion, ProfileAPIVersion)
	}
	if len(p.Features) == 0 {
		return errors.New("features: empty")
	}
	if _, err := p.featureIndex(); err != nil {
		return fmt.Errorf("features: %w", err)
	}
	n := len(p.Features)
	check := func(name string, s *FeatureStats) error {
		if len(s.Mean) != n || len(s.Std) != n {
			return fmt.Errorf("%s: mean and std need %d values each, one per feature", name, n)
		}
		for i := range n {
			if math.IsNaN(s.Mean[i]) || math.IsInf(s.Mean[i], 0) || !(s.Std[i] >= 0) || math.IsInf(s.Std[i], 0) {
				return fmt.Errorf("%s: feature %s has mean %v std %v", name, p.Features[i], s.Mean[i], s.Std[i])
			}
		}
		return nil
	}
	if err := check("sensitive", &p.Sensitive); err != nil {
		return err
	}
	if p.Background != nil {
		if err := check("background", p.Background); err != nil {
			return err
		}
	}
	if !(p.MaxDistance > 0) || math.IsInf(p.MaxDistance, 0) {
		return fmt.Errorf("max_distance %v: must be positive", p.MaxDistance)
	}
	if p.MinInstructions < 0 {
		return fmt.Errorf("min_instructions %v: must not be negative", p.MinInstructions)
	}
	return nil
}

// ParseProfile decodes and validates a profile.json.
func ParseProfile(data []byte) (*Profile, error) {
	var p Profile
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("profile %q: %w", p.Name, err)
	}
	return &p, nil
}

// minStd keeps a feature with no spread in training from dominating.
const minStd = 0.05

func distance(c *IntervalCounters, idx []int, s *FeatureStats) (float64, bool) {
	var sum float64
	n := 0
	for i, fi := range idx {
		v, ok := c.feature(fi)
		if !ok {
			continue
		}
		z := (v - s.Mean[i]) / math.Max(s.Std[i], minStd)
		sum += z * z
		n++
	}
	if n == 0 || n*2 < len(idx) {
		return 0, false
	}
	return math.Sqrt(sum / float64(n)), true
}

// Matches reports whether one interval's counters look like the profiled
// sensitive code.
func (p *Profile) Matches(c *IntervalCounters) bool {
	if c[trace.Instructions] < p.MinInstructions || c[trace.Instructions] <= 0 {
		return false
	}
	idx, err := p.featureIndex()
	if err != nil {
		return false
	}
	return p.matches(c, idx)
}

func (p *Profile) matches(c *IntervalCounters, idx []int) bool {
	if c[trace.Instructions] < p.MinInstructions || c[trace.Instructions] <= 0 {
		return false
	}
	ds, ok := distance(c, idx, &p.Sensitive)
	if !ok || ds > p.MaxDistance {
		return false
	}
	if p.Background != nil {
		if db, ok := distance(c, idx, p.Background); ok && db <= ds {
			return false
		}
	}
	return true
}

// LearnProfile learns a profile from labelled intervals of one VMI.
// sensitive[i] labels intervals[i]. It needs at least 5 sensitive
// intervals with instructions counted.
func LearnProfile(name string, intervals []IntervalCounters, sensitive []bool) (*Profile, error) {
	if len(intervals) != len(sensitive) {
		return nil, errors.New("learn profile: one label per interval")
	}
	var sens, back []*IntervalCounters
	for i := range intervals {
		if intervals[i][trace.Instructions] <= 0 {
			continue
		}
		if sensitive[i] {
			sens = append(sens, &intervals[i])
		} else {
			back = append(back, &intervals[i])
		}
	}
	if len(sens) < 5 {
		return nil, fmt.Errorf("learn profile: %d sensitive intervals with instructions counted, need at least 5", len(sens))
	}
	// Use the features every sensitive interval has.
	var feats []string
	var idx []int
	for fi, f := range profileFeatureNames {
		ok := true
		for _, c := range sens {
			if _, has := c.feature(fi); !has {
				ok = false
				break
			}
		}
		if ok {
			feats = append(feats, f)
			idx = append(idx, fi)
		}
	}
	if len(feats) == 0 {
		return nil, errors.New("learn profile: the sensitive intervals lack instructions/cycles/LLC counters needed by every feature")
	}
	stats := func(set []*IntervalCounters) FeatureStats {
		s := FeatureStats{Mean: make([]float64, len(idx)), Std: make([]float64, len(idx))}
		for i, fi := range idx {
			var sum, sq float64
			n := 0
			for _, c := range set {
				if v, ok := c.feature(fi); ok {
					sum += v
					sq += v * v
					n++
				}
			}
			if n > 0 {
				m := sum / float64(n)
				s.Mean[i] = m
				s.Std[i] = math.Sqrt(math.Max(0, sq/float64(n)-m*m))
			}
		}
		return s
	}
	p := &Profile{APIVersion: ProfileAPIVersion, Name: name, Features: feats, Sensitive: stats(sens)}
	if len(back) >= 5 {
		b := stats(back)
		p.Background = &b
	}
	ins := make([]float64, len(sens))
	ds := make([]float64, 0, len(sens))
	for i, c := range sens {
		ins[i] = c[trace.Instructions]
		if d, ok := distance(c, idx, &p.Sensitive); ok {
			ds = append(ds, d)
		}
	}
	slices.Sort(ins)
	slices.Sort(ds)
	p.MinInstructions = ins[len(ins)/20] / 4
	p.MaxDistance = math.Max(1.5, 1.25*ds[min(len(ds)-1, len(ds)*95/100)])
	tp, fp := 0, 0
	for _, c := range sens {
		if p.matches(c, idx) {
			tp++
		}
	}
	for _, c := range back {
		if p.matches(c, idx) {
			fp++
		}
	}
	p.Training.Intervals = len(sens) + len(back)
	p.Training.SensitiveIntervals = len(sens)
	p.Training.TruePositiveRate = float64(tp) / float64(len(sens))
	if len(back) > 0 {
		p.Training.FalsePositiveRate = float64(fp) / float64(len(back))
	}
	return p, nil
}
