package controllers

import (
	"context"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	virtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// vmiLocator says on which node a VMI runs now, "" when it does not exist
// (or exists with another uid than the one given, when one is given).
type vmiLocator func(namespace, name string, uid types.UID) string

// cacheLocator locates VMIs through the cache. It reads each namespace the
// suspects live in once, without copying the cached objects (it only reads
// them), so one pass over many findings stays cheap.
func cacheLocator(ctx context.Context, c client.Reader) vmiLocator {
	byNamespace := map[string]map[string]*virtv1.VirtualMachineInstance{}
	return func(namespace, name string, uid types.UID) string {
		vmis, ok := byNamespace[namespace]
		if !ok {
			vmis = map[string]*virtv1.VirtualMachineInstance{}
			var list virtv1.VirtualMachineInstanceList
			if err := c.List(ctx, &list, client.InNamespace(namespace), client.UnsafeDisableDeepCopy); err == nil {
				for i := range list.Items {
					vmis[list.Items[i].Name] = &list.Items[i]
				}
			}
			byNamespace[namespace] = vmis
		}
		v := vmis[name]
		if v == nil || (uid != "" && v.UID != uid) {
			return ""
		}
		return v.Status.NodeName
	}
}

// exclusion is why a node may not receive a victim.
type exclusion struct {
	// Node is excluded ...
	Node string
	// ... because of this finding (namespace/name) ...
	Finding string
	// ... as its affected node (true) or as the node of one of its suspects.
	Affected bool
}

// excludedNodes computes the nodes no sidewatch migration may target:
//   - the affected node (spec.node) of every unresolved finding, and the
//     nodes its suspects run on now;
//   - the nodes that suspects of findings resolved less than quarantine
//     ago run on now, when the finding was actionable: the attacker is
//     still there after its victim left.
//
// A finding no policy cared about (Actionable=False) stops counting once it
// is resolved. The result maps node to the first reason found, in a
// deterministic order.
func excludedNodes(findings []v1alpha1.ThreatFinding, locate vmiLocator, now time.Time, quarantine time.Duration) map[string]exclusion {
	sorted := make([]*v1alpha1.ThreatFinding, 0, len(findings))
	for i := range findings {
		sorted = append(sorted, &findings[i])
	}
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].Namespace != sorted[j].Namespace {
			return sorted[i].Namespace < sorted[j].Namespace
		}
		return sorted[i].Name < sorted[j].Name
	})
	out := map[string]exclusion{}
	add := func(node string, f *v1alpha1.ThreatFinding, affected bool) {
		if node == "" {
			return
		}
		if _, ok := out[node]; !ok {
			out[node] = exclusion{Node: node, Finding: f.Namespace + "/" + f.Name, Affected: affected}
		}
	}
	for _, f := range sorted {
		if f.DeletionTimestamp != nil {
			continue
		}
		active := !f.Status.Phase.Final()
		if !active && !inQuarantine(f, now, quarantine) {
			continue
		}
		if active {
			add(f.Spec.Node, f, true)
		}
		for _, s := range f.Spec.Suspects {
			add(locate(s.Namespace, s.Name, s.UID), f, false)
		}
	}
	return out
}

// inQuarantine reports whether a resolved finding still keeps its suspects'
// nodes excluded.
func inQuarantine(f *v1alpha1.ThreatFinding, now time.Time, quarantine time.Duration) bool {
	if quarantine <= 0 || f.Status.ResolvedTime == nil {
		return false
	}
	if meta.IsStatusConditionFalse(f.Status.Conditions, v1alpha1.FindingActionable) {
		return false
	}
	return now.Before(f.Status.ResolvedTime.Add(quarantine))
}

// nextQuarantineEnd is the earliest future moment a resolved finding stops
// excluding nodes, or zero.
func nextQuarantineEnd(findings []v1alpha1.ThreatFinding, now time.Time, quarantine time.Duration) time.Time {
	var next time.Time
	for i := range findings {
		f := &findings[i]
		if !f.Status.Phase.Final() || !inQuarantine(f, now, quarantine) {
			continue
		}
		end := f.Status.ResolvedTime.Add(quarantine)
		if next.IsZero() || end.Before(next) {
			next = end
		}
	}
	return next
}

// maxRecordedExclusions bounds status.migration.excludedNodes, so that a
// cluster under a storm of findings cannot grow a finding past what etcd
// stores.
const maxRecordedExclusions = 256

// sortedNodes returns the excluded node names in order, at most
// maxRecordedExclusions of them.
func sortedNodes(ex map[string]exclusion) []string {
	out := make([]string, 0, len(ex))
	for n := range ex {
		out = append(out, n)
	}
	sort.Strings(out)
	if len(out) > maxRecordedExclusions {
		out = out[:maxRecordedExclusions]
	}
	return out
}

// timeOr returns t's time or zero.
func timeOr(t *metav1.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.Time
}
