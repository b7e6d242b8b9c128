package controllers

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/fakevirt"
)

// unit is one ThreatFindingReconciler over a fake client and a fake clock.
type unit struct {
	t        *testing.T
	r        *ThreatFindingReconciler
	c        client.Client
	clock    *clocktesting.FakeClock
	recorder *events.FakeRecorder
	finding  types.NamespacedName
}

// newUnit builds the world of one finding "f" about VMI "vm" on node "a"
// in namespace "ns", governed by a Migrate policy; mutate adjusts the
// policy. Nodes a, b and c exist.
func newUnit(t *testing.T, funcs *interceptor.Funcs, mutate func(*v1alpha1.SideChannelPolicySpec), extra ...client.Object) *unit {
	t.Helper()
	clk := clocktesting.NewFakeClock(t0)
	policy := &v1alpha1.SideChannelPolicy{ObjectMeta: metav1.ObjectMeta{Name: "protect"}}
	policy.Spec.Response.Action = v1alpha1.ActionMigrate
	if mutate != nil {
		mutate(&policy.Spec)
	}
	vmi := fakevirt.NewVMI("ns", "vm", "a", nil)
	vmi.UID = "vmi-uid"
	f := &v1alpha1.ThreatFinding{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "f", UID: "f-uid", Generation: 1,
		CreationTimestamp: metav1.NewTime(t0.Add(-time.Second))}}
	f.Spec = v1alpha1.ThreatFindingSpec{Node: "a", Type: v1alpha1.CacheCovertChannel, Severity: v1alpha1.SeverityHigh, Score: 0.9,
		Victim: v1alpha1.Victim{Name: "vm"}, FirstSeen: metav1.NewTime(t0), LastSeen: metav1.NewTime(t0)}
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}},
		fakevirt.NewNode("a", nil), fakevirt.NewNode("b", nil), fakevirt.NewNode("c", nil),
		vmi, policy, f,
	}
	objs = append(objs, extra...)
	b := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).
		WithStatusSubresource(&v1alpha1.ThreatFinding{}, &v1alpha1.SideChannelPolicy{}, &virtv1.VirtualMachineInstanceMigration{})
	for _, ix := range Indexes() {
		b = b.WithIndex(ix.Object, ix.Field, ix.Extract)
	}
	if funcs != nil {
		b = b.WithInterceptorFuncs(*funcs)
	}
	c := b.Build()
	rec := events.NewFakeRecorder(100)
	m := NewMetrics(c)
	if err := m.Register(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	r := &ThreatFindingReconciler{
		Client: c, APIReader: c, Scheme: scheme, Recorder: rec, Metrics: m,
		Labeler: NewTargetLabeler(c, clk),
		Options: Options{Clock: clk},
	}
	r.init()
	return &unit{t: t, r: r, c: c, clock: clk, recorder: rec, finding: types.NamespacedName{Namespace: "ns", Name: "f"}}
}

func (u *unit) reconcile() ctrl.Result {
	u.t.Helper()
	res, err := u.r.Reconcile(context.Background(), ctrl.Request{NamespacedName: u.finding})
	if err != nil {
		u.t.Fatalf("Reconcile: %v", err)
	}
	return res
}

// settle runs passes until none asks to look again at once: the pass that
// creates a migration leaves its status to the next one.
func (u *unit) settle() ctrl.Result {
	u.t.Helper()
	res := u.reconcile()
	for i := 0; i < 5 && res.RequeueAfter == u.r.Options.ConflictRetry; i++ {
		res = u.reconcile()
	}
	return res
}

func (u *unit) get() *v1alpha1.ThreatFinding {
	u.t.Helper()
	f := &v1alpha1.ThreatFinding{}
	if err := u.c.Get(context.Background(), u.finding, f); err != nil {
		u.t.Fatal(err)
	}
	return f
}

func (u *unit) migrations() []virtv1.VirtualMachineInstanceMigration {
	u.t.Helper()
	var list virtv1.VirtualMachineInstanceMigrationList
	if err := u.c.List(context.Background(), &list, client.InNamespace("ns")); err != nil {
		u.t.Fatal(err)
	}
	return list.Items
}

// finish ends migration name in phase at time at, as KubeVirt would.
func (u *unit) finish(name string, phase virtv1.VirtualMachineInstanceMigrationPhase, at time.Time, reason string) {
	u.t.Helper()
	m := &virtv1.VirtualMachineInstanceMigration{}
	if err := u.c.Get(context.Background(), types.NamespacedName{Namespace: "ns", Name: name}, m); err != nil {
		u.t.Fatal(err)
	}
	m.Status.Phase = phase
	m.Status.PhaseTransitionTimestamps = append(m.Status.PhaseTransitionTimestamps,
		virtv1.VirtualMachineInstanceMigrationPhaseTransitionTimestamp{Phase: phase, PhaseTransitionTimestamp: metav1.NewTime(at)})
	m.Status.MigrationState = &virtv1.VirtualMachineInstanceMigrationState{Failed: phase == virtv1.MigrationFailed, FailureReason: reason,
		Completed: phase == virtv1.MigrationSucceeded, TargetNode: "b"}
	if err := u.c.Status().Update(context.Background(), m); err != nil {
		u.t.Fatal(err)
	}
}

func (u *unit) drainEvents() []string {
	var out []string
	for {
		select {
		case e := <-u.recorder.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func countPrefix(events []string, prefix string) int {
	n := 0
	for _, e := range events {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

func TestUnitConflictsRetriedWithoutDuplicates(t *testing.T) {
	var conflicts atomic.Int32
	conflicts.Store(statusWriteAttempts + 2) // more than one pass retries by itself
	funcs := &interceptor.Funcs{
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			if _, ok := obj.(*v1alpha1.ThreatFinding); ok && conflicts.Add(-1) >= 0 {
				return apierrors.NewConflict(schema.GroupResource{Group: "sidewatch.io", Resource: "threatfindings"}, obj.GetName(), nil)
			}
			return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
		},
	}
	u := newUnit(t, funcs, nil)
	// Pass 1 creates the migration and leaves the status to the next pass.
	if res := u.reconcile(); res.RequeueAfter != u.r.Options.ConflictRetry {
		t.Errorf("after creating, RequeueAfter = %s, want %s", res.RequeueAfter, u.r.Options.ConflictRetry)
	}
	if ms := u.migrations(); len(ms) != 1 {
		t.Fatalf("%d migrations after pass 1, want 1", len(ms))
	}
	// Pass 2 records it, but every status write conflicts.
	res := u.reconcile()
	if res.RequeueAfter != u.r.Options.ConflictRetry {
		t.Errorf("after conflicts RequeueAfter = %s, want the conflict retry %s", res.RequeueAfter, u.r.Options.ConflictRetry)
	}
	if f := u.get(); f.Status.Phase != "" {
		t.Fatalf("status written despite conflicts: %s", f.Status.Phase)
	}
	if ev := u.drainEvents(); len(ev) != 0 {
		t.Errorf("events announced for a status that was not written: %v", ev)
	}
	// Pass 3: two more conflicts, retried within the pass on the latest
	// object; the existing migration is adopted, not duplicated.
	u.reconcile()
	if ms := u.migrations(); len(ms) != 1 {
		t.Fatalf("%d migrations after pass 3, want 1", len(ms))
	}
	f := u.get()
	if f.Status.Phase != v1alpha1.PhaseMitigating || f.Status.Migration.Attempts != 1 || f.Status.Migration.SourceNode != "a" {
		t.Errorf("status = %s %+v, want Mitigating, attempt 1 from a", f.Status.Phase, f.Status.Migration)
	}
	ev := u.drainEvents()
	// Each event goes to the finding and to the VMI.
	if n := countPrefix(ev, "Normal MigrationStarted"); n != 2 {
		t.Errorf("MigrationStarted recorded %d times, want 2 (finding and VMI): %v", n, ev)
	}
	if n := u.r.Metrics.MigrationsStarted; testutil.ToFloat64(n) != 1 {
		t.Errorf("started counter = %v, want 1", testutil.ToFloat64(n))
	}
}

func TestUnitBackoffDoublesThenGivesUp(t *testing.T) {
	u := newUnit(t, nil, func(s *v1alpha1.SideChannelPolicySpec) {
		s.Response.MaxMigrationAttempts = 3
		s.Response.RetryBackoff = &metav1.Duration{Duration: 30 * time.Second}
	})
	u.settle()
	name1 := u.get().Status.Migration.Name

	u.clock.Step(5 * time.Second)
	u.finish(name1, virtv1.MigrationFailed, u.clock.Now(), "no space on target")
	res := u.settle()
	f := u.get()
	if want := t0.Add(35 * time.Second); f.Status.Migration.NextAttemptTime == nil || !f.Status.Migration.NextAttemptTime.Time.Equal(want) {
		t.Fatalf("nextAttemptTime = %v, want %s", f.Status.Migration.NextAttemptTime, want)
	}
	if res.RequeueAfter != 30*time.Second {
		t.Errorf("RequeueAfter = %s, want 30s", res.RequeueAfter)
	}
	if c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingMigrating); c == nil || c.Reason != v1alpha1.ReasonRetryScheduled ||
		!strings.Contains(c.Message, "no space on target") {
		t.Errorf("Migrating = %+v, want RetryScheduled with the failure", c)
	}
	if f.Status.Phase != v1alpha1.PhaseMitigating {
		t.Errorf("phase = %s while a retry is scheduled, want Mitigating", f.Status.Phase)
	}

	// Too early: nothing happens.
	u.clock.Step(20 * time.Second)
	u.settle()
	if n := len(u.migrations()); n != 1 {
		t.Fatalf("%d migrations before the backoff ended, want 1", n)
	}
	u.clock.Step(10 * time.Second) // t0+35s
	u.settle()
	f = u.get()
	if f.Status.Migration.Attempts != 2 || len(u.migrations()) != 2 {
		t.Fatalf("attempts %d, migrations %d; want 2 and 2", f.Status.Migration.Attempts, len(u.migrations()))
	}

	u.clock.Step(5 * time.Second) // t0+40s
	u.finish(f.Status.Migration.Name, virtv1.MigrationFailed, u.clock.Now(), "again")
	u.settle()
	f = u.get()
	if want := t0.Add(100 * time.Second); !f.Status.Migration.NextAttemptTime.Time.Equal(want) {
		t.Errorf("second wait ends %s, want %s (60s: doubled)", f.Status.Migration.NextAttemptTime.Time, want)
	}
	u.clock.SetTime(t0.Add(100 * time.Second))
	u.settle()
	f = u.get()
	u.clock.Step(5 * time.Second)
	u.finish(f.Status.Migration.Name, virtv1.MigrationFailed, u.clock.Now(), "third time")
	u.settle()
	f = u.get()
	if f.Status.Phase != v1alpha1.PhaseMitigationFailed || f.Status.Migration.Attempts != 3 || f.Status.ResolvedTime == nil {
		t.Errorf("phase %s attempts %d resolved %v, want MitigationFailed after 3", f.Status.Phase, f.Status.Migration.Attempts, f.Status.ResolvedTime)
	}
	// Resolved: kept for the TTL, then deleted.
	if res := u.settle(); res.RequeueAfter != DefaultFindingTTL {
		t.Errorf("resolved finding requeues after %s, want the TTL %s", res.RequeueAfter, DefaultFindingTTL)
	}
	u.clock.Step(DefaultFindingTTL)
	u.settle()
	if err := u.c.Get(context.Background(), u.finding, &v1alpha1.ThreatFinding{}); !apierrors.IsNotFound(err) {
		t.Errorf("finding still there after its TTL: %v", err)
	}
}

func TestUnitCooldownWaitsForTheClock(t *testing.T) {
	// An earlier finding about the same VMI moved it 10 minutes ago.
	earlier := &v1alpha1.ThreatFinding{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "earlier", UID: "e-uid"}}
	earlier.Spec = v1alpha1.ThreatFindingSpec{Node: "c", Type: v1alpha1.CacheSideChannel, Severity: v1alpha1.SeverityHigh,
		Victim: v1alpha1.Victim{Name: "vm"}, Suspects: []v1alpha1.Suspect{{Namespace: "ns", Name: "x"}}}
	earlier.Status.Phase = v1alpha1.PhaseMitigated
	earlier.Status.Migration = &v1alpha1.MigrationStatus{Attempts: 1, Result: resultSucceeded,
		CompletionTime: &metav1.Time{Time: t0.Add(-10 * time.Minute)}}
	u := newUnit(t, nil, nil, earlier) // default cooldown 30m
	res := u.settle()
	f := u.get()
	if c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingMigrating); c == nil || c.Reason != v1alpha1.ReasonCooldown {
		t.Fatalf("Migrating = %+v, want Cooldown", c)
	}
	if res.RequeueAfter != 20*time.Minute {
		t.Errorf("RequeueAfter = %s, want the 20m left of the cooldown", res.RequeueAfter)
	}
	if f.Status.Phase != v1alpha1.PhaseDetected || len(u.migrations()) != 0 {
		t.Errorf("phase %s with %d migrations during the cooldown", f.Status.Phase, len(u.migrations()))
	}
	u.clock.Step(20 * time.Minute)
	u.settle()
	if n := len(u.migrations()); n != 1 {
		t.Errorf("%d migrations after the cooldown, want 1", n)
	}
}

func TestUnitRefusedCreateCountsAsFailedAttempt(t *testing.T) {
	funcs := &interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if _, ok := obj.(*virtv1.VirtualMachineInstanceMigration); ok {
				return apierrors.NewForbidden(schema.GroupResource{Group: "kubevirt.io", Resource: "virtualmachineinstancemigrations"},
					obj.GetName(), errString("admission webhook \"migration-create-validator.kubevirt.io\" denied the request"))
			}
			return c.Create(ctx, obj, opts...)
		},
	}
	u := newUnit(t, funcs, func(s *v1alpha1.SideChannelPolicySpec) { s.Response.MaxMigrationAttempts = 1 })
	u.settle()
	f := u.get()
	if f.Status.Phase != v1alpha1.PhaseMitigationFailed || !strings.Contains(f.Status.Migration.LastFailure, "denied the request") {
		t.Errorf("phase %s, last failure %q; want MitigationFailed naming the refusal", f.Status.Phase, f.Status.Migration.LastFailure)
	}
}

func TestUnitOwnedMigrationVanishedMidFlight(t *testing.T) {
	u := newUnit(t, nil, nil)
	u.settle()
	f := u.get()
	// KubeVirt garbage-collected the migration while the operator was
	// away, and the VMI now runs on c.
	m := &virtv1.VirtualMachineInstanceMigration{}
	if err := u.c.Get(context.Background(), types.NamespacedName{Namespace: "ns", Name: f.Status.Migration.Name}, m); err != nil {
		t.Fatal(err)
	}
	if err := u.c.Delete(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	vmi := &virtv1.VirtualMachineInstance{}
	if err := u.c.Get(context.Background(), types.NamespacedName{Namespace: "ns", Name: "vm"}, vmi); err != nil {
		t.Fatal(err)
	}
	vmi.Status.NodeName = "c"
	if err := u.c.Update(context.Background(), vmi); err != nil {
		t.Fatal(err)
	}
	u.settle()
	f = u.get()
	if f.Status.Phase != v1alpha1.PhaseMitigated || f.Status.Migration.TargetNode != "c" || f.Status.Migration.Duration != nil {
		t.Errorf("phase %s target %s duration %v; want Mitigated on c with an unknown duration",
			f.Status.Phase, f.Status.Migration.TargetNode, f.Status.Migration.Duration)
	}
}

func TestUnitWaitsForItsOwnWrite(t *testing.T) {
	u := newUnit(t, nil, nil)
	stale := u.get().ResourceVersion
	u.settle()
	// A cache still showing the version the write replaced is behind: the
	// pass waits instead of acting on it.
	if !u.r.writes.pending(types.UID("f-uid"), stale, u.clock.Now()) {
		t.Error("the version read before the write does not count as stale")
	}
	if u.r.writes.pending(types.UID("f-uid"), u.get().ResourceVersion, u.clock.Now()) {
		t.Error("the written version counts as stale")
	}
	// A lost event does not stall the finding for long.
	u.r.writes.expect("f-uid", u.clock.Now(), stale)
	u.clock.Step(expectationTTL + time.Second)
	if u.r.writes.pending("f-uid", stale, u.clock.Now()) {
		t.Errorf("still waiting after the expectation expired")
	}
}

func TestUnitMigrationOwnership(t *testing.T) {
	u := newUnit(t, nil, nil)
	u.settle()
	ms := u.migrations()
	if len(ms) != 1 {
		t.Fatalf("%d migrations", len(ms))
	}
	m := &ms[0]
	if !controllerutil.HasControllerReference(m) || controllingFinding(m) != "f-uid" {
		t.Errorf("owner references = %+v, want the finding as controller", m.OwnerReferences)
	}
	for k, want := range map[string]string{v1alpha1.LabelManagedBy: v1alpha1.ManagedByValue, v1alpha1.LabelAttempt: "1",
		v1alpha1.LabelFinding: "f", v1alpha1.LabelVictim: "vm"} {
		if m.Labels[k] != want {
			t.Errorf("label %s = %q, want %q", k, m.Labels[k], want)
		}
	}
	if m.Annotations[annotationSourceNode] != "a" {
		t.Errorf("source-node annotation = %q, want a", m.Annotations[annotationSourceNode])
	}
	// The labeler labelled every node before the migration existed.
	for n, want := range map[string]string{"a": "excluded", "b": "allowed", "c": "allowed"} {
		node := &corev1.Node{}
		if err := u.c.Get(context.Background(), types.NamespacedName{Name: n}, node); err != nil {
			t.Fatal(err)
		}
		if got := node.Labels[v1alpha1.LabelMigrationTarget]; got != want {
			t.Errorf("node %s label = %q, want %q", n, got, want)
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func TestUnitFailureNoticedAfterItsBackoff(t *testing.T) {
	u := newUnit(t, nil, nil) // backoff 30s
	u.settle()
	first := u.get().Status.Migration.Name
	u.finish(first, virtv1.MigrationFailed, t0.Add(5*time.Second), "lost the target")
	u.drainEvents()
	// The operator was away for a minute: the failure and the next attempt
	// land in one pass, and the failure is still counted and announced.
	u.clock.SetTime(t0.Add(time.Minute))
	u.settle()
	f := u.get()
	if f.Status.Migration.Attempts != 2 || f.Status.Migration.LastFailure != "lost the target" {
		t.Errorf("migration = %+v, want attempt 2 remembering why attempt 1 failed", f.Status.Migration)
	}
	if got := testutil.ToFloat64(u.r.Metrics.MigrationsFailed); got != 1 {
		t.Errorf("failed counter = %v, want 1", got)
	}
	if got := testutil.ToFloat64(u.r.Metrics.MigrationsStarted); got != 2 {
		t.Errorf("started counter = %v, want 2", got)
	}
	ev := u.drainEvents()
	if countPrefix(ev, "Warning MigrationFailed") != 2 || countPrefix(ev, "Normal MigrationStarted") != 2 {
		t.Errorf("events = %v, want MigrationFailed and MigrationStarted on the finding and the VMI", ev)
	}
}

// The agent's evidence reference (an annotation) reaches status.evidence
// once checked; a forged one does not, and is reported.
func TestUnitEvidenceReferenceCopied(t *testing.T) {
	for _, tc := range []struct {
		name       string
		annotation string
		want       string // ConfigMap name in status.evidence, "" for none
		event      bool
	}{
		{"valid", `{"configMapName":"f-evidence","bytes":4096,"capturedAt":"2026-11-23T10:00:00Z"}`, "f-evidence", false},
		{"another ConfigMap", `{"configMapName":"kube-root-ca.crt","bytes":4096,"capturedAt":"2026-11-23T10:00:00Z"}`, "", true},
		{"not JSON", `evidence please`, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUnit(t, nil, func(s *v1alpha1.SideChannelPolicySpec) { s.Response.Action = v1alpha1.ActionAlert })
			f := u.get()
			f.Annotations = map[string]string{"sidewatch.io/evidence": tc.annotation}
			if err := u.c.Update(context.Background(), f); err != nil {
				t.Fatal(err)
			}
			u.settle()
			got := u.get().Status.Evidence
			switch {
			case tc.want == "" && got != nil:
				t.Errorf("status.evidence = %+v, want none", got)
			case tc.want != "" && (got == nil || got.ConfigMapName != tc.want || got.Bytes != 4096):
				t.Errorf("status.evidence = %+v, want %s", got, tc.want)
			}
			if n := countPrefix(u.drainEvents(), "Warning "+EventEvidenceRefInvalid); (n > 0) != tc.event {
				t.Errorf("%d %s events, want some: %v", n, EventEvidenceRefInvalid, tc.event)
			}
		})
	}
}
