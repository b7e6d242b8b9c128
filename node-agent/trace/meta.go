package trace

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Metadata keys sidewatch interprets. Readers ignore keys they do not know.
const (
	// MetaInterval is the counter read interval, a Go duration ("100ms").
	MetaInterval = "interval"
	// MetaSamplePeriodPrefix + counter name is that counter's overflow
	// threshold: one sample row per that many events.
	MetaSamplePeriodPrefix = "sample_period."
	// MetaCPU describes the host CPU, free text.
	MetaCPU = "cpu"
	// MetaGuestRegion maps a guest address range of a VMI to a file and,
	// optionally, a symbol (see ParseGuestRegion).
	MetaGuestRegion = "guest_region"
)

// Metadata collects the metadata a trace declares.
type Metadata struct {
	// Interval is the counter read interval, 0 when not declared.
	Interval time.Duration
	// SamplePeriod[c] is counter c's sample period, 0 when not declared.
	SamplePeriod [NumCounters + 1]int64
	// CPU is the host CPU description.
	CPU string
}

// Apply interprets one metadata line into m. It returns nil for keys it
// does not know and for guest regions (see ParseGuestRegion), and an error
// naming the key for a known key with a bad value.
func (m *Metadata) Apply(key, value []byte) error {
	k := string(key)
	switch {
	case k == MetaInterval:
		d, err := time.ParseDuration(string(value))
		if err != nil || d <= 0 {
			return fmt.Errorf("metadata %s: %q is not a positive duration such as 100ms", k, value)
		}
		m.Interval = d
	case strings.HasPrefix(k, MetaSamplePeriodPrefix):
		name := k[len(MetaSamplePeriodPrefix):]
		c, ok := CounterByName(name)
		if !ok {
			return fmt.Errorf("metadata %s: unknown counter %q", k, name)
		}
		p, err := strconv.ParseInt(string(value), 10, 64)
		if err != nil || p <= 0 {
			return fmt.Errorf("metadata %s: %q is not a positive integer", k, value)
		}
		m.SamplePeriod[c] = p
	case k == MetaCPU:
		m.CPU = string(value)
	}
	return nil
}

// GuestRegion says that guest addresses [Start, End) of one VMI hold the
// code of Path (a guest file, or "[kernel]"), inside Symbol when known.
type GuestRegion struct {
	Namespace string
	VMI       string
	Start     uint64
	End       uint64
	Path      string
	Symbol    string
}

// String formats r as the value of a guest_region metadata line.
func (r GuestRegion) String() string {
	s := fmt.Sprintf("%s/%s 0x%x-0x%x %s", r.Namespace, r.VMI, r.Start, r.End, escapeField(r.Path))
	if r.Symbol != "" {
		s += " " + escapeField(r.Symbol)
	}
	return s
}

// ParseGuestRegion parses the value of a guest_region line:
//
//	<namespace>/<vmi> 0x<start>-0x<end> <path> [<symbol>]
//
// Fields are separated by spaces; a space or percent sign inside path or
// symbol is written %20 or %25. End is exclusive and must exceed start.
func ParseGuestRegion(value string) (GuestRegion, error) {
	var r GuestRegion
	f := strings.Fields(value)
	if len(f) < 3 || len(f) > 4 {
		return r, fmt.Errorf("guest_region %q: want \"<namespace>/<vmi> 0x<start>-0x<end> <path> [<symbol>]\"", value)
	}
	ns, vmi, ok := strings.Cut(f[0], "/")
	if !ok || ns == "" || vmi == "" || strings.Contains(vmi, "/") {
		return r, fmt.Errorf("guest_region: %q is not <namespace>/<vmi>", f[0])
	}
	lo, hi, ok := strings.Cut(f[1], "-")
	if !ok {
		return r, fmt.Errorf("guest_region: range %q is not 0x<start>-0x<end>", f[1])
	}
	start, ok1 := parseIP([]byte(lo))
	end, ok2 := parseIP([]byte(hi))
	if !ok1 || !ok2 || end <= start {
		return r, fmt.Errorf("guest_region: range %q is not 0x<start>-0x<end> with end > start", f[1])
	}
	path, err := unescapeField(f[2])
	if err != nil {
		return r, fmt.Errorf("guest_region: path: %w", err)
	}
	r = GuestRegion{Namespace: ns, VMI: vmi, Start: start, End: end, Path: path}
	if len(f) == 4 {
		if r.Symbol, err = unescapeField(f[3]); err != nil {
			return r, fmt.Errorf("guest_region: symbol: %w", err)
		}
	}
	return r, nil
}

func escapeField(s string) string {
	s = strings.ReplaceAll(s, "%", "%25")
	return strings.ReplaceAll(s, " ", "%20")
}

func unescapeField(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("bad escape in %q", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape in %q", s)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}
