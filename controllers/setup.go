package controllers

import (
	"context"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
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
	recorder, err := newEventRecorder(ctx, mgr.GetConfig(), mgr, opts)
	if err != nil {
		return nil, err
	}
	labeler := NewTargetLabeler(mgr.GetClient(), opts.Clock)
	findings := &ThreatFindingReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Scheme:    mgr.GetScheme(),
		Recorder:  recorder,
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

// EventReporter is the reporting controller of sidewatch's Events.
const EventReporter = "sidewatch-operator"

// newEventRecorder returns an events.k8s.io recorder that writes through a
// client of its own, limited to opts.EventQPS. The events library writes
// every Event from its own goroutine; during a burst of findings, hundreds
// of them would otherwise compete with the migrations they announce. The
// response goes first; its Events follow within seconds. The recorder stops
// with ctx.
func newEventRecorder(ctx context.Context, cfg *rest.Config, mgr ctrl.Manager, opts Options) (events.EventRecorder, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = opts.EventQPS, opts.EventBurst
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("events client: %w", err)
	}
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	if err := b.StartRecordingToSinkWithContext(ctx); err != nil {
		return nil, fmt.Errorf("start recording events: %w", err)
	}
	go func() {
		<-ctx.Done()
		b.Shutdown()
	}()
	return b.NewRecorder(mgr.GetScheme(), EventReporter), nil
}
