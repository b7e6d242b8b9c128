package controllers

import (
	"fmt"
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// selectorPolicy is a SideChannelPolicy with its selectors parsed once.
type selectorPolicy struct {
	policy *v1alpha1.SideChannelPolicy
	ns     labels.Selector
	vmi    labels.Selector
	// err is set when a selector does not parse; such a policy selects
	// nothing (its status says why).
	err error
}

// compilePolicy parses p's selectors. An absent selector, like an empty
// one, selects everything (the API's documented meaning), whereas
// metav1.LabelSelectorAsSelector(nil) would select nothing.
func compilePolicy(p *v1alpha1.SideChannelPolicy) selectorPolicy {
	sp := selectorPolicy{policy: p}
	var err error
	if sp.ns, err = selectorOrEverything(p.Spec.NamespaceSelector); err != nil {
		sp.err = fmt.Errorf("spec.namespaceSelector: %w", err)
		return sp
	}
	if sp.vmi, err = selectorOrEverything(p.Spec.VMISelector); err != nil {
		sp.err = fmt.Errorf("spec.vmiSelector: %w", err)
	}
	return sp
}

func selectorOrEverything(s *metav1.LabelSelector) (labels.Selector, error) {
	if s == nil {
		return labels.Everything(), nil
	}
	return metav1.LabelSelectorAsSelector(s)
}

// selects reports whether the policy protects a VMI with vmiLabels in a
// namespace with nsLabels.
func (sp selectorPolicy) selects(nsLabels, vmiLabels map[string]string) bool {
	if sp.err != nil || sp.policy.DeletionTimestamp != nil {
		return false
	}
	return sp.ns.Matches(labels.Set(nsLabels)) && sp.vmi.Matches(labels.Set(vmiLabels))
}

// outranks is the overlap rule: between two policies that select the same
// VMI, the higher spec.priority wins; on a tie the name that sorts first
// wins. Names are unique (the kind is cluster-scoped), so the order is
// total and every VMI has at most one governing policy.
func outranks(a, b *v1alpha1.SideChannelPolicy) bool {
	if a.Spec.Priority != b.Spec.Priority {
		return a.Spec.Priority > b.Spec.Priority
	}
	return a.Name < b.Name
}

// compilePolicies parses every policy and sorts them by the overlap rule,
// winner first, so the first that selects a VMI governs it.
func compilePolicies(items []v1alpha1.SideChannelPolicy) []selectorPolicy {
	out := make([]selectorPolicy, 0, len(items))
	for i := range items {
		out = append(out, compilePolicy(&items[i]))
	}
	sort.Slice(out, func(i, j int) bool { return outranks(out[i].policy, out[j].policy) })
	return out
}

// governing returns the policy that governs a VMI, or nil when none
// selects it. policies must come from compilePolicies.
func governing(policies []selectorPolicy, nsLabels, vmiLabels map[string]string) *v1alpha1.SideChannelPolicy {
	for _, sp := range policies {
		if sp.selects(nsLabels, vmiLabels) {
			return sp.policy
		}
	}
	return nil
}

// responseOf returns the policy's response with every default filled in,
// so that a policy built in Go or stored before a default changed behaves
// like one the API server defaulted. A nil policy yields the defaults.
func responseOf(p *v1alpha1.SideChannelPolicy) v1alpha1.ResponseSpec {
	var spec v1alpha1.SideChannelPolicySpec
	if p != nil {
		spec = *p.Spec.DeepCopy()
	}
	spec.Default()
	return spec.Response
}
