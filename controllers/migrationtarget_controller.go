package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// migrationTargetsKey is the single key the MigrationTargetReconciler
// works on: the labels of all nodes form one state.
var migrationTargetsKey = types.NamespacedName{Name: "migration-targets"}

// MigrationTargetReconciler keeps the migration-target labels on the nodes
// current while sidewatch may migrate (new nodes get labelled, nodes whose
// findings resolved become allowed again, quarantines end), and removes
// them from every node once it may not.
//
// Sidewatch may migrate while a SideChannelPolicy with action Migrate
// exists, a sidewatch migration is unfinished, or an unresolved finding may
// still lead to one (its action is Migrate or not yet decided). Keeping the
// labels in place whenever a Migrate policy exists means that when an attack
// comes, only the nodes whose verdict changes are written before the
// victim's migration is created, not every node of the cluster. Labels are
// removed LabelGrace after the last labelling at the earliest.
type MigrationTargetReconciler struct {
	client.Client
	Labeler *TargetLabeler
	Options Options

	// lastRun spaces the passes: every finding event triggers this
	// reconciler, and during a burst of findings one pass every
	// minLabelInterval is plenty (a finding that is about to migrate labels
	// the nodes itself). One worker runs it, so no lock is needed.
	lastRun time.Time
}

// minLabelInterval is the least time between two passes of the
// MigrationTargetReconciler.
const minLabelInterval = 250 * time.Millisecond

// Reconcile labels every node, or removes the labels.
func (r *MigrationTargetReconciler) Reconcile(ctx context.Context, _ ctrl.Request) (ctrl.Result, error) {
	log := logf.FromContext(ctx)
	now := r.Options.Clock.Now()
	// Read-only lists: the cached objects are not copied.
	var findings v1alpha1.ThreatFindingList
	if err := r.List(ctx, &findings, client.UnsafeDisableDeepCopy); err != nil {
		return ctrl.Result{}, fmt.Errorf("list findings: %w", err)
	}
	var migrations virtv1.VirtualMachineInstanceMigrationList
	if err := r.List(ctx, &migrations, client.MatchingLabels{v1alpha1.LabelManagedBy: v1alpha1.ManagedByValue}, client.UnsafeDisableDeepCopy); err != nil {
		return ctrl.Result{}, fmt.Errorf("list sidewatch migrations: %w", err)
	}
	var policies v1alpha1.SideChannelPolicyList
	if err := r.List(ctx, &policies, client.UnsafeDisableDeepCopy); err != nil {
		return ctrl.Result{}, fmt.Errorf("list policies: %w", err)
	}
	work, why := hasMigrationWork(policies.Items, findings.Items, migrations.Items)
	graceEnd := r.Labeler.LastEnsure().Add(r.Options.LabelGrace)
	if !work && now.Before(graceEnd) {
		// A migration may be about to be created with these labels and not
		// be in the cache yet: leave them a little longer.
		return ctrl.Result{RequeueAfter: graceEnd.Sub(now) + time.Millisecond}, nil
	}
	if !work {
		if err := r.Labeler.Cleanup(ctx); err != nil {
			return ctrl.Result{}, err
		}
		log.V(1).Info("no migration work: migration-target labels removed")
		return ctrl.Result{}, nil
	}
	excluded := excludedNodes(findings.Items, cacheLocator(ctx, r.Client), now, r.Options.SuspectQuarantine)
	if _, err := r.Labeler.Ensure(ctx, excluded); err != nil {
		return ctrl.Result{}, err
	}
	log.V(1).Info("migration-target labels current", "why", why, "excluded", len(excluded))

	// Look again when a quarantine or the grace period ends, and now and
	// then anyway: suspects move without touching findings.
	res := ctrl.Result{RequeueAfter: r.Options.WaitRequeue}
	if end := nextQuarantineEnd(findings.Items, now, r.Options.SuspectQuarantine); !end.IsZero() {
		res = lowestRequeue(res, ctrl.Result{RequeueAfter: end.Sub(now) + time.Millisecond})
	}
	return res, nil
}

// hasMigrationWork reports whether sidewatch may still create or follow a
// migration, and why.
func hasMigrationWork(policies []v1alpha1.SideChannelPolicy, findings []v1alpha1.ThreatFinding, migrations []virtv1.VirtualMachineInstanceMigration) (bool, string) {
	for i := range policies {
		if p := &policies[i]; p.DeletionTimestamp == nil && p.Spec.Response.Action == v1alpha1.ActionMigrate {
			return true, "policy " + p.Name + " may migrate"
		}
	}
	for i := range migrations {
		if !migrations[i].IsFinal() {
			return true, "migration " + migrations[i].Namespace + "/" + migrations[i].Name + " is in flight"
		}
	}
	for i := range findings {
		f := &findings[i]
		if f.DeletionTimestamp == nil && !f.Status.Phase.Final() && f.Status.Action != v1alpha1.ActionAlert {
			return true, "finding " + f.Namespace + "/" + f.Name + " is unresolved"
		}
	}
	return false, ""
}

// SetupWithManager triggers the single key on any change that can move a
// label: nodes appearing or relabelled, findings, sidewatch migrations.
func (r *MigrationTargetReconciler) SetupWithManager(mgr ctrl.Manager) error {
	one := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []ctrl.Request {
		return []ctrl.Request{{NamespacedName: migrationTargetsKey}}
	})
	nodeChange := predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*corev1.Node)
			n, ok2 := e.ObjectNew.(*corev1.Node)
			if !ok1 || !ok2 {
				return true
			}
			return o.Labels[v1alpha1.LabelMigrationTarget] != n.Labels[v1alpha1.LabelMigrationTarget]
		},
	}
	sidewatchMigration := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetLabels()[v1alpha1.LabelManagedBy] == v1alpha1.ManagedByValue
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("migrationtargets").
		Watches(&corev1.Node{}, one, builder.WithPredicates(nodeChange)).
		Watches(&v1alpha1.ThreatFinding{}, one).
		Watches(&v1alpha1.SideChannelPolicy{}, one, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&virtv1.VirtualMachineInstanceMigration{}, one, builder.WithPredicates(sidewatchMigration)).
		Complete(r)
}
