package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	virtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/fakevirt"
)

func TestHappyPath(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	op := startOperator(t, testOptions())
	w.vmi("payments-db", "a", nil)
	w.vmi("spy", "a", nil)
	w.policy("protect", nil)
	virt.Hold(w.key("payments-db"), virtv1.MigrationRunning)
	w.finding("covert", "payments-db", "a", "spy")

	// While the migration runs, the affected node is excluded and the
	// others are allowed targets.
	f := w.waitPhase("covert", v1alpha1.PhaseMitigating, 10*time.Second)
	eventually(t, 5*time.Second, "node labels", func() error {
		for short, want := range map[string]string{"a": "excluded", "b": "allowed", "c": "allowed"} {
			n := &corev1.Node{}
			if err := admin.Get(w.ctx, client.ObjectKey{Name: w.node(short)}, n); err != nil {
				return err
			}
			if got := n.Labels[v1alpha1.LabelMigrationTarget]; got != want {
				return fmt.Errorf("node %s: %s=%q, want %q", short, v1alpha1.LabelMigrationTarget, got, want)
			}
		}
		return nil
	})
	if !meta.IsStatusConditionTrue(f.Status.Conditions, v1alpha1.FindingMigrating) {
		t.Errorf("Migrating condition not True while mitigating: %+v", f.Status.Conditions)
	}
	virt.Release(w.key("payments-db"))

	f = w.waitPhase("covert", v1alpha1.PhaseMitigated, 10*time.Second)
	ms := w.migrationsOf("payments-db")
	if len(ms) != 1 {
		t.Fatalf("%d migrations, want 1", len(ms))
	}
	m := ms[0]
	if got := m.Spec.AddedNodeSelector[v1alpha1.LabelMigrationTarget]; got != v1alpha1.MigrationTargetAllowed {
		t.Errorf("addedNodeSelector = %v, want %s=allowed", m.Spec.AddedNodeSelector, v1alpha1.LabelMigrationTarget)
	}
	if ref := metav1.GetControllerOf(&m); ref == nil || ref.UID != f.UID {
		t.Errorf("migration controller reference = %+v, want the finding", ref)
	}
	mig := f.Status.Migration
	target := w.vmiNode("payments-db")
	switch {
	case mig == nil:
		t.Fatal("status.migration is empty")
	case mig.Attempts != 1 || mig.Name != m.Name || mig.Result != "Succeeded":
		t.Errorf("migration status = %+v, want attempt 1 of %s Succeeded", mig, m.Name)
	case mig.SourceNode != w.node("a") || mig.TargetNode != target || target == w.node("a"):
		t.Errorf("source %s target %s (VMI on %s), want a -> another node", mig.SourceNode, mig.TargetNode, target)
	case mig.Duration == nil || mig.CompletionTime == nil || mig.StartTime == nil:
		t.Errorf("migration status lacks times: %+v", mig)
	case !contains(mig.ExcludedNodes, w.node("a")):
		t.Errorf("excludedNodes = %v, want the affected node", mig.ExcludedNodes)
	}
	if f.Status.Policy != w.ns+"-protect" || f.Status.Action != v1alpha1.ActionMigrate || f.Status.ResolvedTime == nil ||
		f.Status.ObservedGeneration != f.Generation || !strings.Contains(f.Status.Message, "moved VMI") {
		t.Errorf("status = policy %q action %q resolved %v observed %d message %q", f.Status.Policy, f.Status.Action,
			f.Status.ResolvedTime, f.Status.ObservedGeneration, f.Status.Message)
	}
	for _, c := range []struct {
		typ    string
		status metav1.ConditionStatus
		reason string
	}{
		{v1alpha1.FindingActionable, metav1.ConditionTrue, v1alpha1.ReasonPolicyMatched},
		{v1alpha1.FindingMigrating, metav1.ConditionFalse, v1alpha1.ReasonMigrationSucceeded},
		{v1alpha1.FindingMitigated, metav1.ConditionTrue, v1alpha1.ReasonMigrationSucceeded},
	} {
		got := meta.FindStatusCondition(f.Status.Conditions, c.typ)
		if got == nil || got.Status != c.status || got.Reason != c.reason || got.ObservedGeneration != f.Generation {
			t.Errorf("condition %s = %+v, want %s/%s", c.typ, got, c.status, c.reason)
		}
	}

	w.waitEvents("ThreatFinding", "covert", EventThreatDetected, EventMigrationStarted, EventMigrationSucceeded)
	w.waitEvents("VirtualMachineInstance", "payments-db", EventThreatDetected, EventMigrationStarted, EventMigrationSucceeded)

	// Counters move just after the status write; gauges read the cache.
	eventually(t, 5*time.Second, "metrics", func() error {
		for name, want := range map[string]float64{
			"sidewatch_migrations_started_total":     1,
			"sidewatch_migrations_succeeded_total":   1,
			"sidewatch_migrations_failed_total":      0,
			"sidewatch_migration_duration_seconds":   1,
			"sidewatch_finding_to_migration_seconds": 1,
		} {
			if got := op.metric(t, name, nil); got != want {
				return fmt.Errorf("%s = %v, want %v", name, got, want)
			}
		}
		if got := op.metric(t, "sidewatch_findings", map[string]string{"type": "CacheCovertChannel", "severity": "High", "phase": "Mitigated"}); got < 1 {
			return fmt.Errorf("sidewatch_findings{phase=Mitigated} = %v, want at least 1", got)
		}
		return nil
	})

	// Labels stay while a Migrate policy exists; without one, and with no
	// migration work left, they go away.
	time.Sleep(time.Second)
	n := &corev1.Node{}
	if err := admin.Get(w.ctx, client.ObjectKey{Name: w.node("b")}, n); err != nil {
		t.Fatal(err)
	}
	if n.Labels[v1alpha1.LabelMigrationTarget] != v1alpha1.MigrationTargetAllowed {
		t.Errorf("node b lost its label while a Migrate policy exists: %v", n.Labels)
	}
	deleteAllPolicies(t)
	eventually(t, 10*time.Second, "labels to be removed", func() error {
		for _, short := range []string{"a", "b", "c"} {
			n := &corev1.Node{}
			if err := admin.Get(w.ctx, client.ObjectKey{Name: w.node(short)}, n); err != nil {
				return err
			}
			if v, ok := n.Labels[v1alpha1.LabelMigrationTarget]; ok {
				return fmt.Errorf("node %s still has %s=%s", short, v1alpha1.LabelMigrationTarget, v)
			}
		}
		return nil
	})
}

func TestTargetAvoidsAffectedAndSuspectNodes(t *testing.T) {
	w := newWorld(t, "a", "b", "c", "d", "e", "f")
	startOperator(t, testOptions())
	w.policy("protect", nil)
	// Finding 1: w1 on d attacked by spy3 on d; its migration is held, so
	// it stays unresolved and d (affected) and e (spy3 moved there) stay
	// excluded.
	w.vmi("w1", "d", nil)
	w.vmi("spy3", "e", nil)
	virt.Hold(w.key("w1"), virtv1.MigrationRunning)
	defer virt.Release(w.key("w1"))
	w.finding("other", "w1", "d", "spy3")
	w.waitPhase("other", v1alpha1.PhaseMitigating, 10*time.Second)

	// Finding 2: victim on a with spy1 on a and spy2 now on b. The empty
	// nodes b and e would be fakevirt's first choice (least loaded, then
	// name); c and f carry load. Only c and f are allowed.
	w.vmi("victim", "a", nil)
	w.vmi("spy1", "a", nil)
	w.vmi("spy2", "b", nil)
	w.vmi("load-c", "c", nil)
	w.vmi("load-f", "f", nil)
	w.finding("attack", "victim", "a", "spy1", "spy2")
	f := w.waitPhase("attack", v1alpha1.PhaseMitigated, 10*time.Second)
	target := w.vmiNode("victim")
	if target != w.node("c") && target != w.node("f") {
		t.Errorf("victim landed on %s, want c or f (a is affected, b hosts a suspect, d is another finding's affected node, e hosts its suspect)", target)
	}
	for _, n := range []string{"a", "b", "d", "e"} {
		if !contains(f.Status.Migration.ExcludedNodes, w.node(n)) {
			t.Errorf("excludedNodes %v lack %s", f.Status.Migration.ExcludedNodes, w.node(n))
		}
	}
}

func TestRestartMidMigrationCreatesNoDuplicate(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.vmi("vm", "a", nil)
	w.policy("protect", nil)
	virt.Hold(w.key("vm"), virtv1.MigrationRunning)
	op1 := startOperator(t, testOptions())
	w.finding("f", "vm", "a")
	eventually(t, 10*time.Second, "migration to run", func() error {
		ms := w.migrationsOf("vm")
		if len(ms) != 1 || ms[0].Status.Phase != virtv1.MigrationRunning {
			return fmt.Errorf("migrations %d", len(ms))
		}
		return nil
	})
	op1.stop()

	// A new operator instance finds the migration in flight and follows it.
	startOperator(t, testOptions())
	time.Sleep(time.Second) // several passes over the finding
	virt.Release(w.key("vm"))
	w.waitPhase("f", v1alpha1.PhaseMitigated, 10*time.Second)
	if ms := w.migrationsOf("vm"); len(ms) != 1 {
		t.Errorf("%d migrations after a restart, want 1", len(ms))
	}
}

func TestRestartBetweenCreateAndStatusAdopts(t *testing.T) {
	w := newWorld(t, "a", "b")
	vmi := w.vmi("vm", "a", nil)
	w.policy("protect", nil)
	// The operator created attempt 1 and stopped before writing the status:
	// the migration exists, the finding's status knows nothing.
	f := w.finding("f", "vm", "a")
	m := newMigration(f, vmi, 1, migrationName(f, 1))
	if err := controllerutil.SetControllerReference(f, m, scheme); err != nil {
		t.Fatal(err)
	}
	if err := admin.Create(w.ctx, m); err != nil {
		t.Fatal(err)
	}
	startOperator(t, testOptions())
	f = w.waitPhase("f", v1alpha1.PhaseMitigated, 10*time.Second)
	if ms := w.migrationsOf("vm"); len(ms) != 1 {
		t.Errorf("%d migrations, want the adopted one only", len(ms))
	}
	if f.Status.Migration.Name != m.Name || f.Status.Migration.SourceNode != w.node("a") {
		t.Errorf("migration status = %+v, want the adopted %s from a", f.Status.Migration, m.Name)
	}
}

func TestFailedMigrationRetriedThenMitigationFailed(t *testing.T) {
	w := newWorld(t, "a", "b")
	op := startOperator(t, testOptions())
	w.vmi("vm", "a", nil)
	w.vmi("lucky", "a", nil)
	w.policy("protect", func(s *v1alpha1.SideChannelPolicySpec) {
		s.Response.MaxMigrationAttempts = 3
		s.Response.RetryBackoff = &metav1.Duration{Duration: time.Second}
	})
	virt.FailNext(w.key("vm"), 3, "target virt-handler lost the domain")
	virt.FailNext(w.key("lucky"), 1, "transient")
	w.finding("doomed", "vm", "a")
	w.finding("retried", "lucky", "a")

	f := w.waitPhase("doomed", v1alpha1.PhaseMitigationFailed, 20*time.Second)
	ms := w.migrationsOf("vm")
	if len(ms) != 3 {
		t.Fatalf("%d migrations, want 3 attempts", len(ms))
	}
	for i, m := range ms {
		if m.Status.Phase != virtv1.MigrationFailed || attemptOf(&m) != i+1 {
			t.Errorf("migration %s: phase %s attempt %d, want Failed attempt %d", m.Name, m.Status.Phase, attemptOf(&m), i+1)
		}
	}
	// The waits double: 1s then 2s (API times have whole seconds).
	gap := func(i int) time.Duration {
		return ms[i].CreationTimestamp.Sub(finishedAt(&ms[i-1], time.Time{}))
	}
	if g1, g2 := gap(1), gap(2); g1 < 0 || g2 < time.Second || g2 <= g1-time.Second {
		t.Errorf("retry gaps %s then %s, want about 1s then about 2s", g1, g2)
	}
	mig := f.Status.Migration
	if mig.Attempts != 3 || mig.Result != "Failed" || mig.LastFailure != "target virt-handler lost the domain" || mig.NextAttemptTime != nil {
		t.Errorf("migration status = %+v", mig)
	}
	if c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingMitigated); c == nil || c.Reason != v1alpha1.ReasonMigrationFailed ||
		!strings.Contains(c.Message, "all 3 attempts") || !strings.Contains(c.Message, "virtctl migrate vm") {
		t.Errorf("Mitigated = %+v, want MigrationFailed naming the attempts and what to do", c)
	}
	w.waitEvents("ThreatFinding", "doomed", EventMigrationFailed, EventMitigationFailed)

	r := w.waitPhase("retried", v1alpha1.PhaseMitigated, 20*time.Second)
	if r.Status.Migration.Attempts != 2 {
		t.Errorf("retried finding took %d attempts, want 2", r.Status.Migration.Attempts)
	}
	// Counters move just after the status write the test saw.
	eventually(t, 5*time.Second, "migration counters", func() error {
		failed, started := op.metric(t, "sidewatch_migrations_failed_total", nil), op.metric(t, "sidewatch_migrations_started_total", nil)
		if failed != 4 || started != 5 {
			return fmt.Errorf("failed %v started %v, want 4 and 5", failed, started)
		}
		return nil
	})
}

func TestNotLiveMigratable(t *testing.T) {
	w := newWorld(t, "a", "b")
	startOperator(t, testOptions())
	w.vmi("vm", "a", nil)
	if err := fakevirt.SetLiveMigratable(w.ctx, admin, w.key("vm"), false, "DisksNotLiveMigratable", "cannot migrate VMI: PVC root is not shared, live migration requires that all PVCs must be shared"); err != nil {
		t.Fatal(err)
	}
	w.policy("protect", nil)
	w.finding("f", "vm", "a")
	f := w.waitPhase("f", v1alpha1.PhaseMitigationFailed, 10*time.Second)
	c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingMitigated)
	if c == nil || c.Reason != v1alpha1.ReasonNotLiveMigratable || !strings.Contains(c.Message, "DisksNotLiveMigratable") {
		t.Errorf("Mitigated = %+v, want NotLiveMigratable with KubeVirt's reason", c)
	}
	if ms := w.migrationsOf("vm"); len(ms) != 0 {
		t.Errorf("%d migrations of a VMI that cannot live-migrate, want 0", len(ms))
	}
	w.waitEvents("VirtualMachineInstance", "vm", EventThreatDetected, EventMigrationSkipped)
}

func TestAlertOnlyNeverMigrates(t *testing.T) {
	w := newWorld(t, "a", "b")
	startOperator(t, testOptions())
	w.vmi("vm", "a", nil)
	w.policy("watch", func(s *v1alpha1.SideChannelPolicySpec) { s.Response.Action = v1alpha1.ActionAlert })
	f := w.finding("f", "vm", "a")
	f = w.waitPhase("f", v1alpha1.PhaseMitigated, 10*time.Second)
	if c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingMitigated); c == nil || c.Reason != v1alpha1.ReasonAlertOnly {
		t.Errorf("Mitigated = %+v, want AlertOnly", c)
	}
	if f.Status.Action != v1alpha1.ActionAlert || f.Status.Migration != nil && f.Status.Migration.Attempts != 0 {
		t.Errorf("action %s migration %+v, want Alert and no attempt", f.Status.Action, f.Status.Migration)
	}
	w.waitEvents("ThreatFinding", "f", EventThreatDetected, EventMigrationSkipped)
	time.Sleep(500 * time.Millisecond)
	if ms := w.migrationsOf("vm"); len(ms) != 0 {
		t.Errorf("%d migrations under an Alert policy, want 0", len(ms))
	}
	if got := w.vmiNode("vm"); got != w.node("a") {
		t.Errorf("VMI moved to %s under an Alert policy", got)
	}
}

func TestCooldown(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	startOperator(t, testOptions())
	w.vmi("vm", "a", nil)
	w.vmi("spy", "a", nil)
	// Long enough that a loaded machine cannot let it pass before the
	// second finding is judged (API times have whole seconds).
	const cooldown = 6 * time.Second
	w.policy("protect", func(s *v1alpha1.SideChannelPolicySpec) {
		s.Response.Cooldown = &metav1.Duration{Duration: cooldown}
	})
	w.finding("first", "vm", "a", "spy")
	first := w.waitPhase("first", v1alpha1.PhaseMitigated, 10*time.Second)
	landed := w.vmiNode("vm")

	// The attacker follows: a new finding on the new node must wait out
	// the cooldown instead of moving the VMI straight away.
	short := strings.TrimPrefix(landed, w.pool+"-")
	w.vmi("spy-again", short, nil)
	w.finding("second", "vm", short, "spy-again")
	w.waitReason("second", v1alpha1.FindingMigrating, v1alpha1.ReasonCooldown, 5*time.Second)
	second := w.waitPhase("second", v1alpha1.PhaseMitigated, 20*time.Second)

	ready := first.Status.Migration.CompletionTime.Add(cooldown)
	// creationTimestamp is truncated to the second.
	if created := second.Status.Migration.StartTime.Time; created.Before(ready.Add(-time.Second)) {
		t.Errorf("second migration started at %s, before the cooldown ended at %s", created, ready)
	}
	if got := w.vmiNode("vm"); got == landed || got == w.node(short) {
		t.Errorf("VMI on %s, want it moved off %s", got, landed)
	}
	w.waitEvents("ThreatFinding", "second", EventMigrationDeferred, EventMigrationStarted)
}

func TestConcurrencyCap(t *testing.T) {
	w := newWorld(t, "a", "b", "c", "d", "e", "f")
	op := startOperator(t, testOptions())
	w.policy("protect", func(s *v1alpha1.SideChannelPolicySpec) { s.Response.MaxConcurrentMigrations = 2 })
	for i := range 20 {
		node := []string{"a", "b"}[i%2]
		w.vmi(fmt.Sprintf("vm-%02d", i), node, nil)
	}

	// Watch the number of sidewatch migrations in flight.
	var (
		mu       sync.Mutex
		maxSeen  int
		stopPoll = make(chan struct{})
		polled   = make(chan struct{})
	)
	go func() {
		defer close(polled)
		for {
			select {
			case <-stopPoll:
				return
			case <-time.After(5 * time.Millisecond):
			}
			var list virtv1.VirtualMachineInstanceMigrationList
			if err := admin.List(context.Background(), &list, client.MatchingLabels{v1alpha1.LabelManagedBy: v1alpha1.ManagedByValue}); err != nil {
				continue
			}
			n := 0
			for _, m := range list.Items {
				if !m.IsFinal() {
					n++
				}
			}
			mu.Lock()
			maxSeen = max(maxSeen, n)
			mu.Unlock()
		}
	}()

	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := []string{"a", "b"}[i%2]
			if err := admin.Create(w.ctx, w.newFinding(fmt.Sprintf("f-%02d", i), fmt.Sprintf("vm-%02d", i), node)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for i := range 20 {
		w.waitPhase(fmt.Sprintf("f-%02d", i), v1alpha1.PhaseMitigated, 60*time.Second)
	}
	close(stopPoll)
	<-polled
	if maxSeen > 2 {
		t.Errorf("saw %d sidewatch migrations in flight at once, want at most 2", maxSeen)
	}
	if maxSeen < 2 {
		t.Errorf("never saw 2 migrations in flight (max %d): the cap was not used", maxSeen)
	}
	throttled := 0
	for i := range 20 {
		if w.eventCount("ThreatFinding", fmt.Sprintf("f-%02d", i), EventMigrationDeferred) > 0 {
			throttled++
		}
	}
	if throttled < 10 {
		t.Errorf("%d of 20 findings were told they wait for a slot, want most of them", throttled)
	}
	eventually(t, 5*time.Second, "started counter", func() error {
		if got := op.metric(t, "sidewatch_migrations_started_total", nil); got != 20 {
			return fmt.Errorf("started = %v, want 20 (one per finding)", got)
		}
		return nil
	})
	for i := range 20 {
		if ms := w.migrationsOf(fmt.Sprintf("vm-%02d", i)); len(ms) != 1 {
			t.Errorf("vm-%02d: %d migrations, want 1", i, len(ms))
		}
	}
}

func TestVictimDeleted(t *testing.T) {
	w := newWorld(t, "a", "b")
	startOperator(t, testOptions())
	w.policy("protect", nil)

	t.Run("before the finding is judged", func(t *testing.T) {
		w.t = t
		w.finding("ghost", "never-existed", "a")
		f := w.waitPhase("ghost", v1alpha1.PhaseSuppressed, 10*time.Second)
		if c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingActionable); c == nil || c.Reason != v1alpha1.ReasonVictimGone {
			t.Errorf("Actionable = %+v, want VictimGone", c)
		}
	})
	t.Run("during the migration", func(t *testing.T) {
		w.t = t
		vmi := w.vmi("vm", "a", nil)
		virt.Hold(w.key("vm"), virtv1.MigrationRunning)
		defer virt.Release(w.key("vm"))
		w.finding("f", "vm", "a")
		w.waitPhase("f", v1alpha1.PhaseMitigating, 10*time.Second)
		if err := admin.Delete(w.ctx, vmi); err != nil {
			t.Fatal(err)
		}
		f := w.waitPhase("f", v1alpha1.PhaseSuppressed, 10*time.Second)
		if c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingActionable); c == nil || c.Reason != v1alpha1.ReasonVictimGone {
			t.Errorf("Actionable = %+v, want VictimGone", c)
		}
		if c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingMigrating); c == nil || c.Status != metav1.ConditionFalse {
			t.Errorf("Migrating = %+v, want False once the victim is gone", c)
		}
	})
	t.Run("re-created under the same name", func(t *testing.T) {
		w.t = t
		old := w.vmi("reborn", "a", nil)
		f := w.newFinding("old-victim", "reborn", "a")
		f.Spec.Victim.UID = "00000000-0000-0000-0000-000000000000"
		if old.UID == f.Spec.Victim.UID {
			t.Fatal("uid collision")
		}
		if err := admin.Create(w.ctx, f); err != nil {
			t.Fatal(err)
		}
		got := w.waitPhase("old-victim", v1alpha1.PhaseSuppressed, 10*time.Second)
		if !strings.Contains(got.Status.Message, "re-created") {
			t.Errorf("message %q, want it to say the VMI was re-created", got.Status.Message)
		}
	})
}

func TestOverlappingPolicies(t *testing.T) {
	w := newWorld(t, "a", "b")
	startOperator(t, testOptions())
	w.vmi("db", "a", map[string]string{"role": "db"})
	w.vmi("web", "a", map[string]string{"role": "web"})
	// db is selected by all three; web by "broad" only. "db-alert" and
	// "db-zz-migrate" tie on priority 10, so the name that sorts first
	// (db-alert) governs db; broad (priority 0) governs web.
	w.policy("broad", nil)
	w.policy("db-zz-migrate", func(s *v1alpha1.SideChannelPolicySpec) {
		s.Priority = 10
		s.VMISelector = &metav1.LabelSelector{MatchLabels: map[string]string{"role": "db"}}
	})
	w.policy("db-alert", func(s *v1alpha1.SideChannelPolicySpec) {
		s.Priority = 10
		s.VMISelector = &metav1.LabelSelector{MatchLabels: map[string]string{"role": "db"}}
		s.Response.Action = v1alpha1.ActionAlert
	})
	w.finding("on-db", "db", "a")
	w.finding("on-web", "web", "a")
	db := w.waitPhase("on-db", v1alpha1.PhaseMitigated, 10*time.Second)
	web := w.waitPhase("on-web", v1alpha1.PhaseMitigated, 10*time.Second)
	if db.Status.Policy != w.ns+"-db-alert" || db.Status.Action != v1alpha1.ActionAlert {
		t.Errorf("db governed by %s (%s), want %s-db-alert (Alert)", db.Status.Policy, db.Status.Action, w.ns)
	}
	if web.Status.Policy != w.ns+"-broad" || web.Status.Action != v1alpha1.ActionMigrate {
		t.Errorf("web governed by %s (%s), want %s-broad (Migrate)", web.Status.Policy, web.Status.Action, w.ns)
	}
	if n := len(w.migrationsOf("db")); n != 0 {
		t.Errorf("db migrated %d times under its Alert policy", n)
	}
	if n := len(w.migrationsOf("web")); n != 1 {
		t.Errorf("web migrated %d times, want 1", n)
	}
	// The policies' status agrees with the rule.
	for suffix, want := range map[string][2]int32{"broad": {2, 1}, "db-alert": {1, 1}, "db-zz-migrate": {1, 0}} {
		eventually(t, 10*time.Second, "policy "+suffix+" counts", func() error {
			p := &v1alpha1.SideChannelPolicy{}
			if err := admin.Get(w.ctx, client.ObjectKey{Name: w.ns + "-" + suffix}, p); err != nil {
				return err
			}
			if p.Status.SelectedVMIs != want[0] || p.Status.GovernedVMIs != want[1] {
				return fmt.Errorf("selected %d governed %d, want %d %d", p.Status.SelectedVMIs, p.Status.GovernedVMIs, want[0], want[1])
			}
			return nil
		})
	}
}

func TestMergedFindingsShareOneMigration(t *testing.T) {
	w := newWorld(t, "a", "b")
	startOperator(t, testOptions())
	w.vmi("vm", "a", nil)
	w.policy("protect", nil)
	virt.Hold(w.key("vm"), virtv1.MigrationScheduling)
	var wg sync.WaitGroup
	for _, name := range []string{"cache", "buslock", "sidechannel"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := admin.Create(w.ctx, w.newFinding(name, "vm", "a")); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	var primary string
	eventually(t, 10*time.Second, "one primary and two merged findings", func() error {
		merged := 0
		primary = ""
		for _, name := range []string{"cache", "buslock", "sidechannel"} {
			f := w.getFinding(name)
			switch {
			case f.Status.Phase == v1alpha1.PhaseMitigating:
				primary = name
			case f.Status.Phase == v1alpha1.PhaseSuppressed && f.Status.MergedInto != "":
				merged++
			}
		}
		if primary == "" || merged != 2 {
			return fmt.Errorf("primary %q, merged %d", primary, merged)
		}
		return nil
	})
	for _, name := range []string{"cache", "buslock", "sidechannel"} {
		if f := w.getFinding(name); name != primary && f.Status.MergedInto != primary {
			t.Errorf("%s merged into %q, want %q", name, f.Status.MergedInto, primary)
		}
	}
	virt.Release(w.key("vm"))
	w.waitPhase(primary, v1alpha1.PhaseMitigated, 10*time.Second)
	if ms := w.migrationsOf("vm"); len(ms) != 1 {
		t.Errorf("%d migrations for three findings about one VMI, want 1", len(ms))
	}
}

func TestVictimAlreadyMigrating(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	startOperator(t, testOptions())
	w.vmi("vm", "a", nil)
	w.vmi("spy", "a", nil)
	w.policy("protect", nil)
	// Someone else (maintenance, the descheduler) is migrating the VMI.
	virt.Hold(w.key("vm"), virtv1.MigrationRunning)
	foreign := &virtv1.VirtualMachineInstanceMigration{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: "maintenance"},
		Spec: virtv1.VirtualMachineInstanceMigrationSpec{VMIName: "vm"}}
	if err := admin.Create(w.ctx, foreign); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "foreign migration to run", func() error {
		if err := admin.Get(w.ctx, client.ObjectKeyFromObject(foreign), foreign); err != nil {
			return err
		}
		if foreign.Status.Phase != virtv1.MigrationRunning {
			return fmt.Errorf("phase %s", foreign.Status.Phase)
		}
		return nil
	})
	w.finding("f", "vm", "a", "spy")
	f := w.waitReason("f", v1alpha1.FindingMigrating, v1alpha1.ReasonVictimAlreadyMigrating, 10*time.Second)
	if f.Status.Phase != v1alpha1.PhaseDetected || !strings.Contains(f.Status.Message, "maintenance") {
		t.Errorf("phase %s message %q, want Detected naming the foreign migration", f.Status.Phase, f.Status.Message)
	}
	virt.Release(w.key("vm"))
	// The foreign migration took the VMI off a: nothing left to do.
	f = w.waitPhase("f", v1alpha1.PhaseMitigated, 10*time.Second)
	if c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingMitigated); c == nil || c.Reason != v1alpha1.ReasonVictimLeftNode {
		t.Errorf("Mitigated = %+v, want VictimLeftNode", c)
	}
	if ms := w.migrationsOf("vm"); len(ms) != 1 {
		t.Errorf("%d migrations, want only the foreign one", len(ms))
	}
}

func TestNoTargetNodeWaitsForCapacity(t *testing.T) {
	w := newWorld(t, "a", "b")
	startOperator(t, testOptions())
	w.vmi("vm", "a", nil)
	w.vmi("spy", "a", nil)
	w.vmi("spy2", "b", nil)
	w.policy("protect", nil)
	w.finding("f", "vm", "a", "spy", "spy2")
	f := w.waitReason("f", v1alpha1.FindingMigrating, v1alpha1.ReasonNoTargetNode, 10*time.Second)
	if !strings.Contains(f.Status.Message, "are excluded (affected nodes or hosting suspects)") {
		t.Errorf("message %q, want it to count the excluded nodes", f.Status.Message)
	}
	w.addNode("c")
	w.waitPhase("f", v1alpha1.PhaseMitigated, 10*time.Second)
	if got := w.vmiNode("vm"); got != w.node("c") {
		t.Errorf("VMI on %s, want the new node c", got)
	}
}

func TestResolvedFindingsExpire(t *testing.T) {
	w := newWorld(t, "a")
	opts := testOptions()
	opts.FindingTTL = 2 * time.Second
	startOperator(t, opts)
	// "vm" is governed by an Alert policy, so its finding resolves at once;
	// "stuck" by a Migrate policy in a one-node pool, so its finding waits
	// for a target forever and must survive the TTL.
	w.vmi("vm", "a", map[string]string{"mode": "alert"})
	w.vmi("stuck", "a", nil)
	w.policy("protect", nil)
	w.policy("alert", func(s *v1alpha1.SideChannelPolicySpec) {
		s.Priority = 10
		s.Response.Action = v1alpha1.ActionAlert
		s.VMISelector = &metav1.LabelSelector{MatchLabels: map[string]string{"mode": "alert"}}
	})
	w.finding("resolved", "vm", "a")
	w.finding("active", "stuck", "a")
	w.waitPhase("resolved", v1alpha1.PhaseMitigated, 10*time.Second)
	w.waitReason("active", v1alpha1.FindingMigrating, v1alpha1.ReasonNoTargetNode, 10*time.Second)
	eventually(t, 10*time.Second, "the resolved finding to be deleted", func() error {
		err := admin.Get(w.ctx, w.key("resolved"), &v1alpha1.ThreatFinding{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	time.Sleep(time.Second)
	if err := admin.Get(w.ctx, w.key("active"), &v1alpha1.ThreatFinding{}); err != nil {
		t.Errorf("the unresolved finding is gone: %v", err)
	}
}

func TestSeverityRaisedReopensSuppressedFinding(t *testing.T) {
	w := newWorld(t, "a", "b")
	startOperator(t, testOptions())
	w.vmi("vm", "a", nil)
	w.policy("protect", nil) // minSeverity defaults to High
	f := w.newFinding("f", "vm", "a")
	f.Spec.Severity = v1alpha1.SeverityMedium
	if err := admin.Create(w.ctx, f); err != nil {
		t.Fatal(err)
	}
	got := w.waitPhase("f", v1alpha1.PhaseSuppressed, 10*time.Second)
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.FindingActionable); c == nil || c.Reason != v1alpha1.ReasonBelowMinSeverity {
		t.Fatalf("Actionable = %+v, want BelowMinSeverity", c)
	}
	// Further detections raise the severity.
	got.Spec.Severity = v1alpha1.SeverityCritical
	got.Spec.Detections = 5
	if err := admin.Update(w.ctx, got); err != nil {
		t.Fatal(err)
	}
	w.waitPhase("f", v1alpha1.PhaseMitigated, 10*time.Second)
}

func TestConflictsFromAgentUpdatesRetried(t *testing.T) {
	w := newWorld(t, "a", "b")
	startOperator(t, testOptions())
	w.vmi("vm", "a", nil)
	w.policy("protect", nil)
	virt.Hold(w.key("vm"), virtv1.MigrationRunning)
	w.finding("f", "vm", "a")

	// The agent keeps merging detections into the finding while the
	// operator works on it, so many of the operator's status writes meet a
	// newer resourceVersion.
	stop := make(chan struct{})
	agentDone := make(chan struct{})
	var updates atomic.Int64
	go func() {
		defer close(agentDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(15 * time.Millisecond):
			}
			f := &v1alpha1.ThreatFinding{}
			if err := admin.Get(w.ctx, w.key("f"), f); err != nil {
				continue
			}
			f.Spec.Detections++
			f.Spec.LastSeen = metav1.NewTime(time.Now().Truncate(time.Second))
			if err := admin.Update(w.ctx, f); err == nil {
				updates.Add(1)
			}
		}
	}()
	w.waitPhase("f", v1alpha1.PhaseMitigating, 15*time.Second)
	// Keep the migration running until the agent has written a good many
	// times, then let it finish under the same barrage.
	eventually(t, 15*time.Second, "20 agent updates", func() error {
		if n := updates.Load(); n < 20 {
			return fmt.Errorf("%d updates", n)
		}
		return nil
	})
	virt.Release(w.key("vm"))
	f := w.waitPhase("f", v1alpha1.PhaseMitigated, 15*time.Second)
	close(stop)
	<-agentDone
	if ms := w.migrationsOf("vm"); len(ms) != 1 {
		t.Errorf("%d migrations, want 1", len(ms))
	}
	if f.Status.Migration.Attempts != 1 {
		t.Errorf("attempts = %d, want 1", f.Status.Migration.Attempts)
	}
	// Each transition was announced once despite the retries.
	w.waitEvents("ThreatFinding", "f", EventMigrationSucceeded)
	for _, r := range []string{EventThreatDetected, EventMigrationStarted, EventMigrationSucceeded} {
		if n := w.eventCount("ThreatFinding", "f", r); n != 1 {
			t.Errorf("%s recorded %d times, want once", r, n)
		}
	}
}
