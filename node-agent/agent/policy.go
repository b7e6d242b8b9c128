package agent

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
)

// Governance is which policy governs each VMI on the node, and what the
// node therefore collects.
type Governance struct {
	// ByVMI maps a governed VMI to its policy (absent: unprotected).
	ByVMI map[discovery.VMIRef]*v1alpha1.SideChannelPolicy
	// Node is the policy whose detector settings the node's engine uses:
	// the highest-priority policy governing any VMI here (name breaks
	// ties), nil when no VMI here is protected.
	Node *v1alpha1.SideChannelPolicy
	// Collection merges the collection settings of every policy governing
	// a VMI here: the shortest interval, the union of events and sampled
	// events, the smallest sample period. Every VMI on the node is
	// collected with it, protected or not: the attacker is usually not
	// protected, and the detectors need its counters.
	Collection v1alpha1.CollectionSpec
	// Invalid lists policies skipped for a bad selector.
	Invalid []string
}

// Govern resolves the policies for the VMIs on the node. A policy selects
// a VMI when its namespaceSelector matches the VMI's namespace labels and
// its vmiSelector the VMI's labels (absent or empty selectors match all);
// among several, the highest spec.priority wins, then the name that sorts
// first (the operator applies the same rule).
func Govern(policies []v1alpha1.SideChannelPolicy, nsLabels map[string]map[string]string, vmis []discovery.VMI) Governance {
	g := Governance{ByVMI: map[discovery.VMIRef]*v1alpha1.SideChannelPolicy{}}
	type compiled struct {
		p      *v1alpha1.SideChannelPolicy
		ns, vm labels.Selector
	}
	var cs []compiled
	for i := range policies {
		p := &policies[i]
		ns, err1 := selector(p.Spec.NamespaceSelector)
		vm, err2 := selector(p.Spec.VMISelector)
		if err1 != nil || err2 != nil {
			g.Invalid = append(g.Invalid, p.Name)
			continue
		}
		cs = append(cs, compiled{p, ns, vm})
	}
	slices.SortFunc(cs, func(a, b compiled) int {
		if c := cmp.Compare(b.p.Spec.Priority, a.p.Spec.Priority); c != 0 {
			return c
		}
		return cmp.Compare(a.p.Name, b.p.Name)
	})
	used := map[string]*v1alpha1.SideChannelPolicy{}
	for _, v := range vmis {
		for _, c := range cs {
			if c.ns.Matches(labels.Set(nsLabels[v.Ref.Namespace])) && c.vm.Matches(labels.Set(v.Labels)) {
				g.ByVMI[v.Ref] = c.p
				used[c.p.Name] = c.p
				break
			}
		}
	}
	for _, c := range cs { // in precedence order
		if p, ok := used[c.p.Name]; ok {
			if g.Node == nil {
				g.Node = p
			}
			g.Collection = mergeCollection(g.Collection, p.Spec.Collection)
		}
	}
	return g
}

func selector(s *metav1.LabelSelector) (labels.Selector, error) {
	if s == nil {
		return labels.Everything(), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return nil, fmt.Errorf("selector: %w", err)
	}
	return sel, nil
}

func mergeCollection(a, b v1alpha1.CollectionSpec) v1alpha1.CollectionSpec {
	if a.Interval == nil {
		return *b.DeepCopy()
	}
	out := *a.DeepCopy()
	if b.Interval != nil && b.Interval.Duration < out.Interval.Duration {
		out.Interval = &metav1.Duration{Duration: b.Interval.Duration}
	}
	out.Events = union(out.Events, b.Events)
	out.SampledEvents = union(out.SampledEvents, b.SampledEvents)
	if b.SamplePeriod > 0 && (out.SamplePeriod == 0 || b.SamplePeriod < out.SamplePeriod) {
		out.SamplePeriod = b.SamplePeriod
	}
	return out
}

// union keeps the fixed order of v1alpha1.AllCounterEvents.
func union(a, b []v1alpha1.CounterEvent) []v1alpha1.CounterEvent {
	var out []v1alpha1.CounterEvent
	for _, e := range v1alpha1.AllCounterEvents {
		if slices.Contains(a, e) || slices.Contains(b, e) {
			out = append(out, e)
		}
	}
	return out
}

// interval of a collection spec, defaulted.
func interval(c v1alpha1.CollectionSpec) time.Duration {
	if c.Interval == nil || c.Interval.Duration <= 0 {
		return 100 * time.Millisecond
	}
	return c.Interval.Duration
}
