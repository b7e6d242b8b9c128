package controllers

import (
	"context"
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Leader election (a Lease and core Events in the operator's namespace) is
// granted by config/rbac/leader_election_role.yaml, kept by hand because no
// reconciler here uses it.

// Setup adds the field indexes, the metrics and every reconciler to mgr.
// The operator's main and the tests call it alike.
func Setup(ctx context.Context, mgr ctrl.Manager, opts Options) (*Metrics, error) {
	opts = opts.withDefaults()
	if err := SetupIndexes(ctx, mgr.GetFieldIndexer()); err != nil {
		return nil, err
	}
	m := NewMetrics(mgr.GetCache())
	reg := opts.Registerer
	if reg == nil {
		reg = metrics.Registry
	}
	if err := m.Register(reg); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	labeler := NewTargetLabeler(mgr.GetClient(), opts.Clock)
	findings := &ThreatFindingReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Scheme:    mgr.GetScheme(),
		Recorder:  mgr.GetEventRecorder("sidewatch-operator"),
		Metrics:   m,
		Labeler:   labeler,
		Options:   opts,
	}
	if err := findings.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("threatfinding controller: %w", err)
	}
	policies := &SideChannelPolicyReconciler{Client: mgr.GetClient(), Clock: opts.Clock, Namespace: opts.Namespace}
	if err := policies.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("sidechannelpolicy controller: %w", err)
	}
	targets := &MigrationTargetReconciler{Client: mgr.GetClient(), Labeler: labeler, Options: opts}
	if err := targets.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("migrationtargets controller: %w", err)
	}
	return m, nil
}
