package controllers

import (
	"context"
	"sort"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// migrationToFindings maps a migration event to the findings it concerns.
func (r *ThreatFindingReconciler) migrationToFindings(ctx context.Context, obj client.Object) []ctrl.Request {
	m, ok := obj.(*virtv1.VirtualMachineInstanceMigration)
	if !ok {
		return nil
	}
	// The cache holds the migration now: its reservation has done its job.
	r.gate.Observed(m.Namespace + "/" + m.Name)
	var about v1alpha1.ThreatFindingList
	if err := r.List(ctx, &about, client.InNamespace(m.Namespace), client.MatchingFields{indexFindingVictim: m.Spec.VMIName}); err != nil {
		logf.FromContext(ctx).Error(err, "list findings about a migrating VMI", "vmi", m.Spec.VMIName)
	}
	var throttled []v1alpha1.ThreatFinding
	if m.IsFinal() && m.Labels[v1alpha1.LabelManagedBy] == v1alpha1.ManagedByValue {
		var all v1alpha1.ThreatFindingList
		if err := r.List(ctx, &all); err != nil {
			logf.FromContext(ctx).Error(err, "list findings waiting for a migration slot")
		}
		throttled = all.Items
	}
	return migrationRequests(m, about.Items, throttled)
}

// migrationRequests is the pure part of migrationToFindings:
//   - the finding that controls the migration;
//   - every unresolved finding about the migrated VMI (one may wait for a
//     foreign migration to end);
//   - when a sidewatch migration has finished, every finding waiting for a
//     free slot under the cap (throttled), so none waits a full requeue.
//
// The result is sorted and free of duplicates.
func migrationRequests(m *virtv1.VirtualMachineInstanceMigration, about, throttled []v1alpha1.ThreatFinding) []ctrl.Request {
	set := map[types.NamespacedName]bool{}
	if name := controllingFindingName(m); name != "" {
		set[types.NamespacedName{Namespace: m.Namespace, Name: name}] = true
	}
	for i := range about {
		f := &about[i]
		if f.Namespace == m.Namespace && f.Spec.Victim.Name == m.Spec.VMIName && !f.Status.Phase.Final() {
			set[client.ObjectKeyFromObject(f)] = true
		}
	}
	freed := m.IsFinal() && m.Labels[v1alpha1.LabelManagedBy] == v1alpha1.ManagedByValue
	for i := range throttled {
		f := &throttled[i]
		if !freed {
			break
		}
		if c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingMigrating); c != nil &&
			c.Reason == v1alpha1.ReasonMigrationThrottled && !f.Status.Phase.Final() {
			set[client.ObjectKeyFromObject(f)] = true
		}
	}
	return sortedRequests(set)
}

// vmiToFindings maps a VMI event to the unresolved findings about it.
func (r *ThreatFindingReconciler) vmiToFindings(ctx context.Context, obj client.Object) []ctrl.Request {
	var list v1alpha1.ThreatFindingList
	if err := r.List(ctx, &list, client.InNamespace(obj.GetNamespace()), client.MatchingFields{indexFindingVictim: obj.GetName()}); err != nil {
		logf.FromContext(ctx).Error(err, "list findings about a VMI", "vmi", obj.GetName())
		return nil
	}
	set := map[types.NamespacedName]bool{}
	for i := range list.Items {
		if !list.Items[i].Status.Phase.Final() {
			set[client.ObjectKeyFromObject(&list.Items[i])] = true
		}
	}
	return sortedRequests(set)
}

// policyToFindings maps a policy change to every unresolved finding that
// has not started a migration: the governing policy may have changed.
func (r *ThreatFindingReconciler) policyToFindings(ctx context.Context, _ client.Object) []ctrl.Request {
	var list v1alpha1.ThreatFindingList
	if err := r.List(ctx, &list); err != nil {
		logf.FromContext(ctx).Error(err, "list findings after a policy change")
		return nil
	}
	set := map[types.NamespacedName]bool{}
	for i := range list.Items {
		f := &list.Items[i]
		if !f.Status.Phase.Final() && !attempted(f) {
			set[client.ObjectKeyFromObject(f)] = true
		}
	}
	return sortedRequests(set)
}

func sortedRequests(set map[types.NamespacedName]bool) []ctrl.Request {
	out := make([]ctrl.Request, 0, len(set))
	for k := range set {
		out = append(out, ctrl.Request{NamespacedName: k})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}
