package detect

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
)

// FindingSpec converts a detection into the spec of a ThreatFinding in the
// victim's namespace (d.Victim.Namespace). UIDs and introspection results
// (Guest) are the agent's to add.
func (d *Detection) FindingSpec() v1alpha1.ThreatFindingSpec {
	at := metav1.NewTime(time.Unix(0, d.TimeNS).UTC())
	first := metav1.NewTime(time.Unix(0, d.FirstCrossingNS).UTC())
	spec := v1alpha1.ThreatFindingSpec{
		Node:       d.Node,
		Type:       d.Type,
		Detector:   d.Detector,
		Severity:   d.Severity,
		Score:      clamp01(d.Score),
		Victim:     v1alpha1.Victim{Name: d.Victim.Name},
		FirstSeen:  first,
		LastSeen:   at,
		Detections: 1,
		Policy:     d.Policy,
	}
	for i, s := range d.Suspects {
		if i >= 16 {
			break
		}
		spec.Suspects = append(spec.Suspects, v1alpha1.Suspect{Namespace: s.Namespace, Name: s.Name, Score: clamp01(s.Score), Role: string(s.Role)})
	}
	ev := d.Evidence
	e := &spec.Evidence
	e.Window = &metav1.Duration{Duration: time.Duration(ev.WindowNS)}
	if ev.PeriodNS > 0 {
		e.Period = &metav1.Duration{Duration: time.Duration(ev.PeriodNS)}
	}
	set := func(v float64) *float64 {
		if v == 0 {
			return nil
		}
		return &v
	}
	e.AutocorrelationPeak = set(max(-1, min(1, ev.AutocorrelationPeak)))
	e.BitsPerSecond = set(ev.BitsPerSecond)
	e.BurstsPerSecond = set(ev.BurstsPerSecond)
	e.LocksPerSecond = set(ev.LocksPerSecond)
	e.Correlation = set(max(-1, min(1, ev.Correlation)))
	e.AnomalyScore = set(ev.AnomalyScore)
	e.Signature = ev.Signature
	e.Samples = ev.Samples
	for i, r := range ev.EventRates {
		if i >= 64 {
			break
		}
		e.EventRates = append(e.EventRates, v1alpha1.EventRate{VMI: r.VMI, Event: v1alpha1.CounterEvent(r.Event), PerSecond: r.PerSecond})
	}
	return spec
}

func clamp01(x float64) float64 { return max(0, min(1, x)) }
