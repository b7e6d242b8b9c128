package agent

import (
	"fmt"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/report"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// EngineDetector runs node-agent/detect's Engine, the same engine
// `sidewatch analyze` replays traces through, on the live streams.
type EngineDetector struct {
	e    *detect.Engine
	node string
	log  logr.Logger
	load detect.ProfileLoader
	ids  map[collect.StreamID]detect.StreamID
	out  []report.Detection
}

// DetectFactory returns a DetectorFactory building EngineDetectors. load
// fetches the counter profiles policies' signatures name (may be nil);
// resolver attributes sampled guest addresses to files for the
// side-channel detector's signatures (may be nil).
func DetectFactory(log logr.Logger, load detect.ProfileLoader, resolver detect.Resolver) DetectorFactory {
	return func(node string, p *v1alpha1.SideChannelPolicy) (Detector, error) {
		cfg := detect.ConfigFromPolicy(p.Spec)
		e, err := detect.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("policy %s: %w", p.Name, err)
		}
		if resolver != nil {
			e.SetResolver(resolver)
		}
		return &EngineDetector{e: e, node: node, log: log, load: load, ids: map[collect.StreamID]detect.StreamID{}}, nil
	}
}

// Observe implements Detector.
func (d *EngineDetector) Observe(timeNS int64, s collect.StreamID, event string, sample bool, value uint64) []report.Detection {
	c, ok := trace.CounterByName(event)
	if !ok {
		return nil // not a sidewatch counter (an unmapped software event)
	}
	if sample {
		c = c.Sample()
	}
	id, ok := d.ids[s]
	if !ok {
		id = d.e.Stream(detect.StreamKey{Node: d.node, VMI: detect.VMIRef{Namespace: s.Namespace, Name: s.VMI}, VCPU: int32(s.VCPU)})
		d.ids[s] = id
	}
	return d.convert(d.e.Observe(detect.Observation{TimeNS: timeNS, Stream: id, Event: c, Value: value}))
}

// Advance implements Detector.
func (d *EngineDetector) Advance(nowNS int64) []report.Detection {
	return d.convert(d.e.Advance(d.node, nowNS))
}

// Protect implements Detector. A signature whose counter profile cannot be
// loaded is left out (and logged) rather than leaving the VMI unprotected.
func (d *EngineDetector) Protect(vmi report.VMIRef, p *v1alpha1.SideChannelPolicy) {
	ref := detect.VMIRef{Namespace: vmi.Namespace, Name: vmi.Name}
	if p == nil {
		d.e.SetProtection(ref, nil)
		return
	}
	prot, err := detect.ProtectionFromPolicy(p.Name, p.Spec, d.load)
	if err != nil {
		d.log.Error(err, "loading the policy's signatures; protecting without counter profiles", "policy", p.Name, "vmi", vmi)
		spec := *p.Spec.DeepCopy()
		sigs := spec.Detectors.CryptoCorrelation.Signatures[:0]
		for _, s := range spec.Detectors.CryptoCorrelation.Signatures {
			if s.ProfileConfigMap == "" {
				sigs = append(sigs, s)
			}
		}
		spec.Detectors.CryptoCorrelation.Signatures = sigs
		if prot, err = detect.ProtectionFromPolicy(p.Name, spec, nil); err != nil {
			d.log.Error(err, "protecting VMI", "vmi", vmi)
			return
		}
	}
	d.e.SetProtection(ref, prot)
}

// Forget implements Detector.
func (d *EngineDetector) Forget(vmi report.VMIRef) {
	d.e.RemoveVMI(d.node, detect.VMIRef{Namespace: vmi.Namespace, Name: vmi.Name})
	for s := range d.ids {
		if s.Namespace == vmi.Namespace && s.VMI == vmi.Name {
			delete(d.ids, s)
		}
	}
}

func (d *EngineDetector) convert(ds []detect.Detection) []report.Detection {
	if len(ds) == 0 {
		return nil
	}
	d.out = d.out[:0]
	for i := range ds {
		d.out = append(d.out, FromDetect(&ds[i]))
	}
	return d.out
}

// FromDetect turns an engine detection into the finding writer's form,
// within the ThreatFinding schema's bounds.
func FromDetect(d *detect.Detection) report.Detection {
	out := report.Detection{
		Type: d.Type, Detector: d.Detector, Node: d.Node,
		Victim: report.VMIRef{Namespace: d.Victim.Namespace, Name: d.Victim.Name},
		Score:  clamp(d.Score, 0, 1), Severity: d.Severity, Policy: d.Policy,
		Time: time.Unix(0, d.TimeNS), FirstSeen: time.Unix(0, d.FirstCrossingNS),
		Forensics: forensics(d),
	}
	if d.FirstCrossingNS == 0 || d.FirstCrossingNS > d.TimeNS {
		out.FirstSeen = out.Time
	}
	for _, s := range d.Suspects {
		if len(out.Suspects) == maxSuspects {
			break
		}
		role := string(s.Role)
		switch s.Role {
		case detect.RoleSender, detect.RoleReceiver, detect.RoleAttacker, detect.RoleUnknown:
		default:
			role = string(detect.RoleUnknown)
		}
		out.Suspects = append(out.Suspects, v1alpha1.Suspect{Namespace: s.Namespace, Name: s.Name, Score: clamp(s.Score, 0, 1), Role: role})
	}
	e := d.Evidence
	ev := &out.Evidence
	if e.WindowNS > 0 {
		ev.Window = &metav1.Duration{Duration: time.Duration(e.WindowNS)}
	}
	if e.PeriodNS > 0 {
		ev.Period = &metav1.Duration{Duration: time.Duration(e.PeriodNS)}
	}
	ev.AutocorrelationPeak = nonZero(clamp(e.AutocorrelationPeak, -1, 1))
	ev.BitsPerSecond = nonZero(max(e.BitsPerSecond, 0))
	ev.BurstsPerSecond = nonZero(max(e.BurstsPerSecond, 0))
	ev.LocksPerSecond = nonZero(max(e.LocksPerSecond, 0))
	ev.Correlation = nonZero(clamp(e.Correlation, -1, 1))
	ev.AnomalyScore = nonZero(e.AnomalyScore)
	ev.Signature = e.Signature
	if len(ev.Signature) > 63 {
		ev.Signature = ev.Signature[:63]
	}
	ev.Samples = max(e.Samples, 0)
	for _, r := range e.EventRates {
		if len(ev.EventRates) == 64 {
			break
		}
		if _, ok := trace.CounterByName(r.Event); !ok || len(r.VMI) > 320 {
			continue
		}
		ev.EventRates = append(ev.EventRates, v1alpha1.EventRate{VMI: r.VMI, Event: v1alpha1.CounterEvent(r.Event), PerSecond: max(r.PerSecond, 0)})
	}
	return out
}

const maxSuspects = 16

func clamp(x, lo, hi float64) float64 { return max(lo, min(hi, x)) }

func nonZero(x float64) *float64 {
	if x == 0 {
		return nil
	}
	return &x
}
