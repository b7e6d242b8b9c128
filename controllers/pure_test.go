package controllers

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func cond(typ string, status metav1.ConditionStatus, reason string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason}
}

func TestDerivePhase(t *testing.T) {
	T, F := metav1.ConditionTrue, metav1.ConditionFalse
	attempted := &v1alpha1.MigrationStatus{Attempts: 1}
	for _, tc := range []struct {
		name string
		st   v1alpha1.ThreatFindingStatus
		want v1alpha1.FindingPhase
	}{
		{"new finding", v1alpha1.ThreatFindingStatus{}, v1alpha1.PhaseDetected},
		{"actionable, waiting", v1alpha1.ThreatFindingStatus{Conditions: []metav1.Condition{
			cond(v1alpha1.FindingActionable, T, v1alpha1.ReasonPolicyMatched),
			cond(v1alpha1.FindingMigrating, F, v1alpha1.ReasonMigrationThrottled),
			cond(v1alpha1.FindingMitigated, F, v1alpha1.ReasonMitigationPending)}}, v1alpha1.PhaseDetected},
		{"no policy", v1alpha1.ThreatFindingStatus{Conditions: []metav1.Condition{
			cond(v1alpha1.FindingActionable, F, v1alpha1.ReasonNoPolicy)}}, v1alpha1.PhaseSuppressed},
		{"victim gone mid-migration wins over attempts", v1alpha1.ThreatFindingStatus{Migration: attempted, Conditions: []metav1.Condition{
			cond(v1alpha1.FindingActionable, F, v1alpha1.ReasonVictimGone),
			cond(v1alpha1.FindingMigrating, T, v1alpha1.ReasonMigrationInProgress)}}, v1alpha1.PhaseSuppressed},
		{"merged", v1alpha1.ThreatFindingStatus{MergedInto: "other", Conditions: []metav1.Condition{
			cond(v1alpha1.FindingActionable, T, v1alpha1.ReasonPolicyMatched)}}, v1alpha1.PhaseSuppressed},
		{"migration in flight", v1alpha1.ThreatFindingStatus{Migration: attempted, Conditions: []metav1.Condition{
			cond(v1alpha1.FindingActionable, T, v1alpha1.ReasonPolicyMatched),
			cond(v1alpha1.FindingMigrating, T, v1alpha1.ReasonMigrationInProgress),
			cond(v1alpha1.FindingMitigated, F, v1alpha1.ReasonMitigationPending)}}, v1alpha1.PhaseMitigating},
		{"retry scheduled", v1alpha1.ThreatFindingStatus{Migration: &v1alpha1.MigrationStatus{Attempts: 1, Result: "Failed"}, Conditions: []metav1.Condition{
			cond(v1alpha1.FindingActionable, T, v1alpha1.ReasonPolicyMatched),
			cond(v1alpha1.FindingMigrating, F, v1alpha1.ReasonRetryScheduled),
			cond(v1alpha1.FindingMitigated, F, v1alpha1.ReasonMitigationPending)}}, v1alpha1.PhaseMitigating},
		{"migrated", v1alpha1.ThreatFindingStatus{Migration: attempted, Conditions: []metav1.Condition{
			cond(v1alpha1.FindingActionable, T, v1alpha1.ReasonPolicyMatched),
			cond(v1alpha1.FindingMitigated, T, v1alpha1.ReasonMigrationSucceeded)}}, v1alpha1.PhaseMitigated},
		{"alert only", v1alpha1.ThreatFindingStatus{Conditions: []metav1.Condition{
			cond(v1alpha1.FindingActionable, T, v1alpha1.ReasonPolicyMatched),
			cond(v1alpha1.FindingMitigated, T, v1alpha1.ReasonAlertOnly)}}, v1alpha1.PhaseMitigated},
		{"attempts spent", v1alpha1.ThreatFindingStatus{Migration: attempted, Conditions: []metav1.Condition{
			cond(v1alpha1.FindingActionable, T, v1alpha1.ReasonPolicyMatched),
			cond(v1alpha1.FindingMitigated, F, v1alpha1.ReasonMigrationFailed)}}, v1alpha1.PhaseMitigationFailed},
		{"not live-migratable", v1alpha1.ThreatFindingStatus{Conditions: []metav1.Condition{
			cond(v1alpha1.FindingActionable, T, v1alpha1.ReasonPolicyMatched),
			cond(v1alpha1.FindingMitigated, F, v1alpha1.ReasonNotLiveMigratable)}}, v1alpha1.PhaseMitigationFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := derivePhase(tc.st); got != tc.want {
				t.Errorf("derivePhase = %s, want %s", got, tc.want)
			}
			// Pure: the same input gives the same phase, and the phase
			// field itself is never read.
			st := tc.st
			st.Phase = v1alpha1.PhaseMitigated
			if got := derivePhase(st); got != tc.want {
				t.Errorf("derivePhase read status.phase: got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestReopenable(t *testing.T) {
	suppressed := func(reason string, gen, observed int64) *v1alpha1.ThreatFinding {
		f := &v1alpha1.ThreatFinding{}
		f.Generation = gen
		f.Status.ObservedGeneration = observed
		f.Status.Phase = v1alpha1.PhaseSuppressed
		f.Status.Conditions = []metav1.Condition{cond(v1alpha1.FindingActionable, metav1.ConditionFalse, reason)}
		return f
	}
	for _, tc := range []struct {
		name string
		f    *v1alpha1.ThreatFinding
		want bool
	}{
		{"severity raised after BelowMinSeverity", suppressed(v1alpha1.ReasonBelowMinSeverity, 2, 1), true},
		{"spec changed after NoPolicy", suppressed(v1alpha1.ReasonNoPolicy, 3, 2), true},
		{"unchanged spec", suppressed(v1alpha1.ReasonBelowMinSeverity, 1, 1), false},
		{"victim gone stays gone", suppressed(v1alpha1.ReasonVictimGone, 2, 1), false},
	} {
		if got := reopenable(tc.f); got != tc.want {
			t.Errorf("%s: reopenable = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestOverlapRule(t *testing.T) {
	pol := func(name string, prio int32, nsSel, vmiSel map[string]string) v1alpha1.SideChannelPolicy {
		p := v1alpha1.SideChannelPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
		p.Spec.Priority = prio
		if nsSel != nil {
			p.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: nsSel}
		}
		if vmiSel != nil {
			p.Spec.VMISelector = &metav1.LabelSelector{MatchLabels: vmiSel}
		}
		return p
	}
	bad := pol("broken", 1000, nil, nil)
	bad.Spec.VMISelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Bogus"}}}
	policies := []v1alpha1.SideChannelPolicy{
		pol("all", 0, nil, nil),
		pol("zeta-payments", 10, map[string]string{"tenant": "payments"}, nil),
		pol("alpha-payments", 10, map[string]string{"tenant": "payments"}, nil),
		pol("db", 20, nil, map[string]string{"role": "db"}),
		pol("empty-selectors", -5, map[string]string{}, map[string]string{}),
		bad,
	}
	compiled := compilePolicies(policies)
	for _, tc := range []struct {
		name      string
		ns, vmi   map[string]string
		want      string
		selectors []string // every policy that selects the VMI
	}{
		{"only the catch-all", nil, nil, "all", []string{"all", "empty-selectors"}},
		{"tie on priority: name order", map[string]string{"tenant": "payments"}, nil, "alpha-payments",
			[]string{"alpha-payments", "zeta-payments", "all", "empty-selectors"}},
		{"higher priority wins", map[string]string{"tenant": "payments"}, map[string]string{"role": "db"}, "db",
			[]string{"db", "alpha-payments", "zeta-payments", "all", "empty-selectors"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := governing(compiled, tc.ns, tc.vmi)
			if got == nil || got.Name != tc.want {
				t.Fatalf("governing = %v, want %s", got, tc.want)
			}
			var sel []string
			for _, sp := range compiled {
				if sp.selects(tc.ns, tc.vmi) {
					sel = append(sel, sp.policy.Name)
				}
			}
			if !reflect.DeepEqual(sel, tc.selectors) {
				t.Errorf("selecting policies in rank order = %v, want %v", sel, tc.selectors)
			}
		})
	}
	// The order is total: shuffling the input never changes the winner.
	for i := range policies {
		rot := append(append([]v1alpha1.SideChannelPolicy{}, policies[i:]...), policies[:i]...)
		if got := governing(compilePolicies(rot), map[string]string{"tenant": "payments"}, nil); got.Name != "alpha-payments" {
			t.Errorf("rotation %d: winner %s, want alpha-payments", i, got.Name)
		}
	}
	if sp := compilePolicy(&bad); sp.err == nil || !strings.Contains(sp.err.Error(), "spec.vmiSelector") {
		t.Errorf("invalid selector error = %v, want one naming spec.vmiSelector", sp.err)
	}
}

func TestExcludedNodes(t *testing.T) {
	where := map[string]string{"a/victim": "n1", "b/spy": "n1", "b/spy2": "n2", "c/old-spy": "n3", "c/lowsev-spy": "n4"}
	locate := func(ns, name string, uid types.UID) string {
		if uid == "stale" {
			return ""
		}
		return where[ns+"/"+name]
	}
	finding := func(name, node string, phase v1alpha1.FindingPhase, resolved *time.Time, actionable bool, suspects ...string) v1alpha1.ThreatFinding {
		f := v1alpha1.ThreatFinding{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name}}
		f.Spec.Node = node
		for _, s := range suspects {
			ns, n, _ := strings.Cut(s, "/")
			f.Spec.Suspects = append(f.Spec.Suspects, v1alpha1.Suspect{Namespace: ns, Name: n})
		}
		f.Status.Phase = phase
		if resolved != nil {
			f.Status.ResolvedTime = &metav1.Time{Time: *resolved}
		}
		f.Status.Conditions = []metav1.Condition{cond(v1alpha1.FindingActionable, boolStatus(actionable), "x")}
		return f
	}
	recent, old := t0.Add(-10*time.Minute), t0.Add(-2*time.Hour)
	findings := []v1alpha1.ThreatFinding{
		finding("active", "n1", v1alpha1.PhaseMitigating, nil, true, "b/spy", "b/spy2"),
		finding("recent", "n9", v1alpha1.PhaseMitigated, &recent, true, "c/old-spy"),
		finding("old", "n8", v1alpha1.PhaseMitigated, &old, true, "b/gone"),
		finding("ignored", "n7", v1alpha1.PhaseSuppressed, &recent, false, "c/lowsev-spy"),
		finding("unjudged", "n6", "", nil, false),
	}
	got := excludedNodes(findings, locate, t0, time.Hour)
	want := map[string]exclusion{
		"n1": {Node: "n1", Finding: "a/active", Affected: true},
		"n2": {Node: "n2", Finding: "a/active"},
		"n3": {Node: "n3", Finding: "a/recent"},
		"n6": {Node: "n6", Finding: "a/unjudged", Affected: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("excludedNodes =\n %v\nwant\n %v", got, want)
	}
	if end := nextQuarantineEnd(findings, t0, time.Hour); !end.Equal(recent.Add(time.Hour)) {
		t.Errorf("nextQuarantineEnd = %s, want %s", end, recent.Add(time.Hour))
	}
	if got := excludedNodes(findings, locate, t0, -1); len(got) != 3 {
		t.Errorf("with the quarantine off, excluded = %v, want only the unresolved findings' nodes", got)
	}
}

func TestReadHeartbeat(t *testing.T) {
	caps := func(c v1alpha1.NodeCapabilities) string {
		b, _ := json.Marshal(c)
		return string(b)
	}
	lease := func(renewAgo time.Duration, duration *int32, annotation *string) *coordinationv1.Lease {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.HeartbeatLeaseName("n1")}}
		if renewAgo >= 0 {
			l.Spec.RenewTime = &metav1.MicroTime{Time: t0.Add(-renewAgo)}
		}
		l.Spec.LeaseDurationSeconds = duration
		if annotation != nil {
			l.Annotations = map[string]string{v1alpha1.AnnotationCapabilities: *annotation}
		}
		return l
	}
	good := caps(v1alpha1.NodeCapabilities{Node: "n1", Monitorable: true})
	noPMU := caps(v1alpha1.NodeCapabilities{Node: "n1", Reason: v1alpha1.ReasonNoHardwareCounters, Message: "node n1: no hardware counters"})
	silent := caps(v1alpha1.NodeCapabilities{Node: "n1"})
	other := caps(v1alpha1.NodeCapabilities{Node: "n2", Monitorable: true})
	garbage := "{not json"
	for _, tc := range []struct {
		name      string
		lease     *coordinationv1.Lease
		monitored bool
		reason    string
		msg       string
		staleAt   time.Time
	}{
		{"no lease", nil, false, v1alpha1.ReasonNoAgent, "no sidewatch agent heartbeat", time.Time{}},
		{"fresh and able", lease(10*time.Second, nil, &good), true, "", "", t0.Add(30 * time.Second)},
		{"custom duration", lease(50*time.Second, ptr.To[int32](60), &good), true, "", "", t0.Add(10 * time.Second)},
		{"stale", lease(41*time.Second, nil, &good), false, v1alpha1.ReasonHeartbeatStale, "last renewed 41s ago", time.Time{}},
		{"exactly at the deadline is stale", lease(40*time.Second, nil, &good), false, v1alpha1.ReasonHeartbeatStale, "", time.Time{}},
		{"never renewed", lease(-1, nil, &good), false, v1alpha1.ReasonHeartbeatStale, "never renewed", time.Time{}},
		{"no capabilities", lease(time.Second, nil, nil), false, v1alpha1.ReasonHeartbeatInvalid, "has no sidewatch.io/capabilities", t0.Add(39 * time.Second)},
		{"garbage capabilities", lease(time.Second, nil, &garbage), false, v1alpha1.ReasonHeartbeatInvalid, "not NodeCapabilities JSON", t0.Add(39 * time.Second)},
		{"capabilities of another node", lease(time.Second, nil, &other), false, v1alpha1.ReasonHeartbeatInvalid, `describe node "n2"`, t0.Add(39 * time.Second)},
		{"agent says no PMU", lease(time.Second, nil, &noPMU), false, v1alpha1.ReasonNoHardwareCounters, "node n1: no hardware counters", t0.Add(39 * time.Second)},
		{"agent unable without reason", lease(time.Second, nil, &silent), false, v1alpha1.ReasonNoHardwareCounters, "cannot monitor", t0.Add(39 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := readHeartbeat("n1", tc.lease, t0)
			if w.Monitored != tc.monitored || w.Reason != tc.reason || !strings.Contains(w.Message, tc.msg) || !w.StaleAt.Equal(tc.staleAt) {
				t.Errorf("readHeartbeat = %+v, want monitored=%v reason=%q message~%q staleAt=%s", w, tc.monitored, tc.reason, tc.msg, tc.staleAt)
			}
		})
	}
}

func TestChoosePrimary(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cands []mergeCandidate
		want  string
	}{
		{"oldest wins", []mergeCandidate{{Name: "b", Created: t0.Add(time.Second)}, {Name: "a", Created: t0.Add(2 * time.Second)}}, "b"},
		{"name breaks a tie", []mergeCandidate{{Name: "b", Created: t0}, {Name: "a", Created: t0}}, "a"},
		{"in-flight migration wins over age", []mergeCandidate{{Name: "old", Created: t0}, {Name: "new", Created: t0.Add(time.Hour), InFlight: true}}, "new"},
		{"an attempt wins over age", []mergeCandidate{{Name: "old", Created: t0}, {Name: "new", Created: t0.Add(time.Hour), Attempted: true}}, "new"},
		{"in flight wins over attempted", []mergeCandidate{{Name: "x", Attempted: true}, {Name: "y", InFlight: true}}, "y"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := choosePrimary(tc.cands); got != tc.want {
				t.Errorf("choosePrimary = %s, want %s", got, tc.want)
			}
			// Order of the input does not matter.
			rev := append([]mergeCandidate{}, tc.cands...)
			for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
				rev[i], rev[j] = rev[j], rev[i]
			}
			if got := choosePrimary(rev); got != tc.want {
				t.Errorf("reversed input: choosePrimary = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestRetryBackoff(t *testing.T) {
	for _, tc := range []struct {
		failures int
		want     time.Duration
	}{{0, 30 * time.Second}, {1, 30 * time.Second}, {2, time.Minute}, {3, 2 * time.Minute}, {5, 8 * time.Minute}} {
		if got := retryBackoff(30*time.Second, tc.failures); got != tc.want {
			t.Errorf("retryBackoff(30s, %d) = %s, want %s", tc.failures, got, tc.want)
		}
	}
}

func TestMigrationName(t *testing.T) {
	f := &v1alpha1.ThreatFinding{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("a", 40) + "-tail.x", UID: "u1"}}
	n1, n2 := migrationName(f, 1), migrationName(f, 1)
	if n1 != n2 {
		t.Errorf("not deterministic: %s vs %s", n1, n2)
	}
	if migrationName(f, 2) == n1 {
		t.Error("attempts share a name")
	}
	g := f.DeepCopy()
	g.UID = "u2"
	if migrationName(g, 1) == n1 {
		t.Error("a re-created finding with the same name reuses the old migration's name")
	}
	if len(n1) > 63 {
		t.Errorf("name %q is %d characters, want at most 63", n1, len(n1))
	}
}

func TestMigrationRequests(t *testing.T) {
	ctrlRef := func(name string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: v1alpha1.GroupVersion.String(), Kind: "ThreatFinding", Name: name, UID: "x", Controller: ptr.To(true)}}
	}
	mig := func(final, sidewatch bool, owner string) *virtv1.VirtualMachineInstanceMigration {
		m := &virtv1.VirtualMachineInstanceMigration{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "m"}}
		m.Spec.VMIName = "vm"
		if final {
			m.Status.Phase = virtv1.MigrationSucceeded
		}
		if sidewatch {
			m.Labels = map[string]string{v1alpha1.LabelManagedBy: v1alpha1.ManagedByValue}
		}
		if owner != "" {
			m.OwnerReferences = ctrlRef(owner)
		}
		return m
	}
	finding := func(ns, name, victim string, phase v1alpha1.FindingPhase, migratingReason string) v1alpha1.ThreatFinding {
		f := v1alpha1.ThreatFinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		f.Spec.Victim.Name = victim
		f.Status.Phase = phase
		if migratingReason != "" {
			meta.SetStatusCondition(&f.Status.Conditions, cond(v1alpha1.FindingMigrating, metav1.ConditionFalse, migratingReason))
		}
		return f
	}
	about := []v1alpha1.ThreatFinding{
		finding("ns", "waiting", "vm", v1alpha1.PhaseDetected, v1alpha1.ReasonVictimAlreadyMigrating),
		finding("ns", "done", "vm", v1alpha1.PhaseMitigated, ""),
	}
	throttled := []v1alpha1.ThreatFinding{
		finding("other", "queued", "x", v1alpha1.PhaseDetected, v1alpha1.ReasonMigrationThrottled),
		finding("other", "cooling", "y", v1alpha1.PhaseDetected, v1alpha1.ReasonCooldown),
	}
	names := func(reqs []ctrl.Request) string {
		var s []string
		for _, r := range reqs {
			s = append(s, r.Namespace+"/"+r.Name)
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		name string
		m    *virtv1.VirtualMachineInstanceMigration
		want string
	}{
		{"running sidewatch migration: owner and waiters", mig(false, true, "owner"), "ns/owner ns/waiting"},
		{"finished sidewatch migration also wakes throttled findings", mig(true, true, "owner"), "ns/owner ns/waiting other/queued"},
		{"foreign migration ends: only findings about the VMI", mig(true, false, ""), "ns/waiting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := names(migrationRequests(tc.m, about, throttled)); got != tc.want {
				t.Errorf("requests = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNotices(t *testing.T) {
	base := &v1alpha1.ThreatFinding{ObjectMeta: metav1.ObjectMeta{Name: "f"}}
	base.Spec.Victim.Name = "vm"
	base.Spec.Node = "n1"
	with := func(mut func(f *v1alpha1.ThreatFinding)) *v1alpha1.ThreatFinding {
		f := base.DeepCopy()
		mut(f)
		f.Status.Phase = derivePhase(f.Status)
		f.Status.Message = summary(f.Status)
		return f
	}
	detected := with(func(f *v1alpha1.ThreatFinding) {
		setActionable(f, true, v1alpha1.ReasonPolicyMatched, "p")
		setWaiting(f, v1alpha1.ReasonMigrationThrottled, "2 in flight")
	})
	started := with(func(f *v1alpha1.ThreatFinding) {
		setActionable(f, true, v1alpha1.ReasonPolicyMatched, "p")
		setMigrating(f, true, v1alpha1.ReasonMigrationInProgress, "moving")
		f.Status.Migration = &v1alpha1.MigrationStatus{Attempts: 1, Name: "m1", SourceNode: "n1", ExcludedNodes: []string{"n1", "n2"}}
	})
	failedOnce := with(func(f *v1alpha1.ThreatFinding) {
		setActionable(f, true, v1alpha1.ReasonPolicyMatched, "p")
		setWaiting(f, v1alpha1.ReasonRetryScheduled, "retry")
		f.Status.Migration = &v1alpha1.MigrationStatus{Attempts: 1, Name: "m1", Result: resultFailed, LastFailure: "boom",
			NextAttemptTime: &metav1.Time{Time: t0}}
	})
	succeeded := with(func(f *v1alpha1.ThreatFinding) {
		setActionable(f, true, v1alpha1.ReasonPolicyMatched, "p")
		setMitigated(f, true, v1alpha1.ReasonMigrationSucceeded, "moved")
		f.Status.Migration = &v1alpha1.MigrationStatus{Attempts: 1, Name: "m1", Result: resultSucceeded, SourceNode: "n1", TargetNode: "n5",
			Duration: &metav1.Duration{Duration: 12 * time.Second}}
	})
	exhausted := with(func(f *v1alpha1.ThreatFinding) {
		setActionable(f, true, v1alpha1.ReasonPolicyMatched, "p")
		setMitigated(f, false, v1alpha1.ReasonMigrationFailed, "all failed")
		f.Status.Migration = &v1alpha1.MigrationStatus{Attempts: 3, Name: "m3", Result: resultFailed, LastFailure: "boom"}
	})
	alert := with(func(f *v1alpha1.ThreatFinding) {
		setActionable(f, true, v1alpha1.ReasonPolicyMatched, "p")
		setMitigated(f, true, v1alpha1.ReasonAlertOnly, "only alerts")
	})
	retriedAtOnce := with(func(f *v1alpha1.ThreatFinding) {
		setActionable(f, true, v1alpha1.ReasonPolicyMatched, "p")
		setMigrating(f, true, v1alpha1.ReasonMigrationInProgress, "moving")
		f.Status.Migration = &v1alpha1.MigrationStatus{Attempts: 2, Name: "m2", SourceNode: "n1", LastFailure: "boom"}
	})
	reasons := func(ns []notice) string {
		var s []string
		for _, n := range ns {
			s = append(s, n.Reason)
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		name          string
		before, after *v1alpha1.ThreatFinding
		want          string
	}{
		{"new and throttled", base, detected, "ThreatDetected MigrationDeferred"},
		{"still throttled: silent", detected, detected, ""},
		{"new and migrating at once", base, started, "ThreatDetected MigrationStarted"},
		{"started after waiting", detected, started, "MigrationStarted"},
		{"first attempt failed", started, failedOnce, "MigrationFailed"},
		{"succeeded", started, succeeded, "MigrationSucceeded"},
		{"last attempt failed", started, exhausted, "MigrationFailed MitigationFailed"},
		{"alert only", base, alert, "ThreatDetected MigrationSkipped"},
		{"a failure noticed after its backoff: failed and restarted in one pass", started, retriedAtOnce, "MigrationStarted MigrationFailed"},
		{"retry after a scheduled wait", failedOnce, retriedAtOnce, "MigrationStarted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := reasons(notices(tc.before, tc.after)); got != tc.want {
				t.Errorf("notices = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestGate(t *testing.T) {
	inflight := func(names ...string) func() ([]virtv1.VirtualMachineInstanceMigration, error) {
		var out []virtv1.VirtualMachineInstanceMigration
		for _, n := range names {
			ns, rest, _ := strings.Cut(n, "/")
			name, vmi, _ := strings.Cut(rest, "@")
			m := virtv1.VirtualMachineInstanceMigration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
			m.Spec.VMIName = vmi
			out = append(out, m)
		}
		return func() ([]virtv1.VirtualMachineInstanceMigration, error) { return out, nil }
	}
	g := newMigrationGate()
	if v, _ := g.Reserve(t0, "a/m1", "a/vm1", "f1", 2, inflight("b/x@vmx")); !v.OK || v.InFlight != 1 {
		t.Fatalf("first reserve = %+v, want OK with 1 in flight", v)
	}
	// The reservation counts until the cache shows the object.
	if v, _ := g.Reserve(t0, "a/m2", "a/vm2", "f2", 2, inflight("b/x@vmx")); v.OK || v.InFlight != 2 {
		t.Errorf("reserve at the cap = %+v, want refused with 2 in flight", v)
	}
	// The same victim is busy even below the cap.
	if v, _ := g.Reserve(t0, "a/m3", "a/vm1", "f3", 10, inflight()); v.OK || v.Busy != "a/m1" {
		t.Errorf("second migration of one VMI = %+v, want busy with a/m1", v)
	}
	if m, f := g.ReservedFor("a/vm1", "", t0); m != "a/m1" || f != "f1" {
		t.Errorf("ReservedFor = %s %s, want a/m1 f1", m, f)
	}
	// Once the cache shows it, the object counts, not the reservation.
	if v, _ := g.Reserve(t0, "a/m4", "a/vm4", "f4", 3, inflight("b/x@vmx", "a/m1@vm1")); !v.OK || v.InFlight != 2 {
		t.Errorf("reserve = %+v, want OK with 2 in flight (no double count)", v)
	}
	g.Release("a/m4")
	// Reservations expire.
	if v, _ := g.Reserve(t0.Add(2*reservationTTL), "a/m5", "a/vm5", "f5", 1, inflight()); !v.OK {
		t.Errorf("after the TTL = %+v, want OK", v)
	}
}

func TestTargetCandidates(t *testing.T) {
	node := func(name string, ready, unschedulable bool, labels map[string]string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
		n.Spec.Unschedulable = unschedulable
		st := corev1.ConditionFalse
		if ready {
			st = corev1.ConditionTrue
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}
		return n
	}
	vmi := &virtv1.VirtualMachineInstance{}
	vmi.Status.NodeName = "src"
	vmi.Spec.NodeSelector = map[string]string{"pool": "a"}
	pool := map[string]string{"pool": "a"}
	nodes := []TargetNode{
		{node("src", true, false, pool), true},
		{node("ok", true, false, pool), true},
		{node("excluded", true, false, pool), false},
		{node("cordoned", true, true, pool), true},
		{node("notready", false, false, pool), true},
		{node("otherpool", true, false, map[string]string{"pool": "b"}), true},
	}
	got, why := targetCandidates(nodes, vmi)
	if !reflect.DeepEqual(got, []string{"ok"}) {
		t.Errorf("candidates = %v, want [ok]", got)
	}
	if want := "of 5 other nodes, 1 are excluded (affected nodes or hosting suspects), 2 are unschedulable or not Ready, 1 do not match the VMI's nodeSelector"; why != want {
		t.Errorf("why = %q\nwant %q", why, want)
	}
}

func TestCountFindings(t *testing.T) {
	f := func(typ v1alpha1.ThreatType, sev v1alpha1.Severity, phase v1alpha1.FindingPhase) v1alpha1.ThreatFinding {
		var x v1alpha1.ThreatFinding
		x.Spec.Type, x.Spec.Severity, x.Status.Phase = typ, sev, phase
		return x
	}
	got := countFindings([]v1alpha1.ThreatFinding{
		f(v1alpha1.CacheCovertChannel, v1alpha1.SeverityHigh, ""),
		f(v1alpha1.CacheCovertChannel, v1alpha1.SeverityHigh, v1alpha1.PhaseDetected),
		f(v1alpha1.BusLockCovertChannel, v1alpha1.SeverityLow, v1alpha1.PhaseSuppressed),
	})
	want := map[findingKey]int{
		{"CacheCovertChannel", "High", "Detected"}:    2,
		{"BusLockCovertChannel", "Low", "Suppressed"}: 1,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("countFindings = %v, want %v", got, want)
	}
}

func TestReadyCondition(t *testing.T) {
	for _, tc := range []struct {
		sel    selection
		nodes  nodeReport
		status metav1.ConditionStatus
		reason string
	}{
		{selection{}, nodeReport{}, metav1.ConditionTrue, v1alpha1.ReasonNoVMIsSelected},
		{selection{Selected: 3, Nodes: []string{"a", "b"}}, nodeReport{Monitored: 2}, metav1.ConditionTrue, v1alpha1.ReasonAllNodesMonitored},
		{selection{Selected: 3, Nodes: []string{"a", "b"}}, nodeReport{Monitored: 1, Unmonitored: []v1alpha1.UnmonitoredNode{{Node: "b", Reason: "NoAgent"}}},
			metav1.ConditionFalse, v1alpha1.ReasonSomeNodesUnmonitored},
	} {
		c := readyCondition(4, tc.sel, tc.nodes)
		if c.Status != tc.status || c.Reason != tc.reason || c.ObservedGeneration != 4 || c.Message == "" {
			t.Errorf("readyCondition(%+v, %+v) = %+v, want %s %s", tc.sel, tc.nodes, c, tc.status, tc.reason)
		}
	}
	c := readyCondition(1, selection{Selected: 1, Nodes: []string{"b"}}, nodeReport{Unmonitored: []v1alpha1.UnmonitoredNode{{Node: "b", Reason: "NoAgent"}}})
	if !strings.Contains(c.Message, "b (NoAgent)") {
		t.Errorf("message %q does not name the node and reason", c.Message)
	}
}

// TestGateCapUnderConcurrency hammers the gate from many goroutines with a
// cache that shows a migration only some time after its create, the way an
// informer does, and checks that the cap holds at every moment.
func TestGateCapUnderConcurrency(t *testing.T) {
	const limit = 2
	var (
		mu      sync.Mutex
		cache   = map[string]bool{} // name -> unfinished
		created = map[string]bool{}
		maxSeen int
	)
	g := newMigrationGate()
	list := func() ([]virtv1.VirtualMachineInstanceMigration, error) {
		mu.Lock()
		defer mu.Unlock()
		var out []virtv1.VirtualMachineInstanceMigration
		for name, running := range cache {
			if running {
				out = append(out, virtv1.VirtualMachineInstanceMigration{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}})
			}
		}
		return out, nil
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				name := fmt.Sprintf("m-%d-%d", w, i)
				v, _ := g.Reserve(time.Now(), "ns/"+name, fmt.Sprintf("ns/vm-%d-%d", w, i), "f", limit, list)
				if !v.OK {
					time.Sleep(50 * time.Microsecond) // requeue
					continue
				}
				mu.Lock()
				created[name] = true
				running := 0
				for n := range created {
					if _, inCache := cache[n]; !inCache || cache[n] {
						running++
					}
				}
				maxSeen = max(maxSeen, running)
				mu.Unlock()
				// The informer delivers the object a moment later.
				go func() {
					time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
					mu.Lock()
					cache[name] = true
					mu.Unlock()
					g.Observed("ns/" + name)
					time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
					mu.Lock()
					cache[name] = false // finished
					mu.Unlock()
				}()
			}
		}()
	}
	wg.Wait()
	if maxSeen > limit {
		t.Errorf("%d migrations in flight at once, cap %d", maxSeen, limit)
	}
	if len(created) < 50 {
		t.Errorf("only %d migrations admitted: the gate starves", len(created))
	}
}
