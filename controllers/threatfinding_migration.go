package controllers

import (
	"context"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Annotations on a sidewatch migration that let the pass after its creation
// (or a restarted operator) adopt it fully: the node the victim was leaving
// and the moment of creation to the nanosecond (creationTimestamp keeps
// whole seconds).
const (
	annotationSourceNode = "sidewatch.io/source-node"
	annotationCreatedAt  = "sidewatch.io/created-at"
	// annotationExcluded lists the excluded nodes, comma-separated.
	annotationExcluded = "sidewatch.io/excluded-nodes"
)

// Migration results recorded in status.migration.result.
const (
	resultSucceeded = "Succeeded"
	resultFailed    = "Failed"
)

// reconcileMigration drives the live migration of the victim: it adopts a
// migration the status does not know yet, follows the current one to its
// end, schedules retries with backoff, and starts the next attempt when
// every guard rail allows it.
func (r *ThreatFindingReconciler) reconcileMigration(ctx context.Context, s *findingScope) (ctrl.Result, error) {
	f := s.finding
	if f.Status.Migration == nil {
		f.Status.Migration = &v1alpha1.MigrationStatus{}
	}
	mig := f.Status.Migration
	owned, err := r.ownedMigrations(ctx, f)
	if err != nil {
		return ctrl.Result{}, err
	}
	s.migrations = owned
	for _, m := range owned {
		r.gate.Observed(m.Namespace + "/" + m.Name)
	}

	// A migration may exist that the status does not record yet: the pass
	// that created it leaves the status to the next one (see
	// startMigration), or the operator stopped in between. Adopt it rather
	// than create another.
	if n := len(owned); n > 0 {
		latest := owned[n-1]
		if a := attemptOf(latest); a > int(mig.Attempts) {
			logf.FromContext(ctx).V(1).Info("recording migration", "migration", latest.Name, "attempt", a)
			start := latest.CreationTimestamp.DeepCopy()
			if t, err := time.Parse(time.RFC3339Nano, latest.Annotations[annotationCreatedAt]); err == nil {
				start = &metav1.Time{Time: t}
			}
			lastFailure := mig.LastFailure
			if n >= 2 && owned[n-2].IsFinal() && owned[n-2].Status.Phase == virtv1.MigrationFailed {
				lastFailure = failureReason(owned[n-2], s.vmi)
			}
			var excluded []string
			if list := latest.Annotations[annotationExcluded]; list != "" {
				excluded = strings.Split(list, ",")
			}
			*mig = v1alpha1.MigrationStatus{
				Name: latest.Name, Attempts: int32(a), SourceNode: latest.Annotations[annotationSourceNode],
				ExcludedNodes: excluded, StartTime: start, LastFailure: lastFailure,
			}
		}
	}

	// Follow the current attempt.
	if mig.Attempts > 0 && mig.Result == "" {
		cur, err := r.currentMigration(ctx, s)
		if err != nil {
			return ctrl.Result{}, err
		}
		switch {
		case cur == nil:
			r.recordVanished(s)
		case !cur.IsFinal():
			phase := cur.Status.Phase
			if phase == "" {
				phase = "created"
			}
			setMigrating(f, true, v1alpha1.ReasonMigrationInProgress, fmt.Sprintf(
				"migration %s (attempt %d of %d) is %s: moving VMI %s off node %s",
				cur.Name, mig.Attempts, s.response.MaxMigrationAttempts, phase, s.victimKey(), mig.SourceNode))
			setMitigated(f, false, v1alpha1.ReasonMitigationPending, "the victim is being moved")
			return ctrl.Result{RequeueAfter: r.Options.FollowRequeue}, nil
		case cur.Status.Phase == virtv1.MigrationSucceeded:
			r.recordSuccess(s, cur)
		default:
			r.recordFailure(s, finishedAt(cur, s.now), failureReason(cur, s.vmi))
		}
		if s.done {
			return ctrl.Result{}, nil
		}
	}

	// The last attempt failed: wait out the backoff.
	if mig.Result == resultFailed && mig.NextAttemptTime != nil && s.now.Before(mig.NextAttemptTime.Time) {
		setWaiting(f, v1alpha1.ReasonRetryScheduled, fmt.Sprintf(
			"attempt %d of %d failed (%s); the next starts at %s",
			mig.Attempts, s.response.MaxMigrationAttempts, mig.LastFailure, mig.NextAttemptTime.UTC().Format(time.RFC3339)))
		return ctrl.Result{RequeueAfter: mig.NextAttemptTime.Sub(s.now)}, nil
	}
	return r.startMigration(ctx, s)
}

// startMigration checks every guard rail and, when all allow it, creates
// the next attempt's migration.
func (r *ThreatFindingReconciler) startMigration(ctx context.Context, s *findingScope) (ctrl.Result, error) {
	f, vmi, mig := s.finding, s.vmi, s.finding.Status.Migration

	if c := liveMigratable(vmi); c != nil && c.Status == corev1.ConditionFalse {
		msg := fmt.Sprintf("VMI %s cannot be live-migrated (%s: %s); remove what blocks live migration or move the workload by hand",
			s.victimKey(), c.Reason, c.Message)
		setMigrating(f, false, v1alpha1.ReasonNotLiveMigratable, msg)
		setMitigated(f, false, v1alpha1.ReasonNotLiveMigratable, msg)
		s.done = true
		return ctrl.Result{}, nil
	}

	// Read-only: the cached objects are not copied.
	var findings v1alpha1.ThreatFindingList
	if err := r.List(ctx, &findings, client.UnsafeDisableDeepCopy); err != nil {
		return ctrl.Result{}, fmt.Errorf("list findings: %w", err)
	}
	excluded := excludedNodes(findings.Items, cacheLocator(ctx, r.Client), s.now, r.Options.SuspectQuarantine)
	if _, ok := excluded[f.Spec.Node]; !ok {
		excluded[f.Spec.Node] = exclusion{Node: f.Spec.Node, Finding: f.Namespace + "/" + f.Name, Affected: true}
	}

	if node := vmi.Status.NodeName; node != "" && node != f.Spec.Node {
		if _, bad := excluded[node]; !bad {
			msg := fmt.Sprintf("VMI %s already runs on node %s, away from node %s and from every suspect: nothing to move", s.victimKey(), node, f.Spec.Node)
			setMigrating(f, false, v1alpha1.ReasonVictimLeftNode, msg)
			setMitigated(f, true, v1alpha1.ReasonVictimLeftNode, msg)
			s.done = true
			return ctrl.Result{}, nil
		}
	}

	name := migrationName(f, int(mig.Attempts)+1)
	if busy, err := r.victimBusy(ctx, s, name); err != nil {
		return ctrl.Result{}, err
	} else if busy != "" {
		setWaiting(f, v1alpha1.ReasonVictimAlreadyMigrating, fmt.Sprintf(
			"migration %s of VMI %s is in progress; sidewatch waits for it to end", busy, s.victimKey()))
		return ctrl.Result{RequeueAfter: r.Options.WaitRequeue}, nil
	}

	if last, by, err := r.lastMove(ctx, s); err != nil {
		return ctrl.Result{}, err
	} else if cooldown := s.response.Cooldown.Duration; !last.IsZero() && s.now.Before(last.Add(cooldown)) {
		until := last.Add(cooldown)
		setWaiting(f, v1alpha1.ReasonCooldown, fmt.Sprintf(
			"sidewatch moved VMI %s at %s (%s); policy %s's cooldown of %s allows the next migration at %s",
			s.victimKey(), last.UTC().Format(time.RFC3339), by, f.Status.Policy, cooldown, until.UTC().Format(time.RFC3339)))
		return ctrl.Result{RequeueAfter: until.Sub(s.now)}, nil
	}

	nodes, err := r.Labeler.Ensure(ctx, excluded)
	if err != nil {
		return ctrl.Result{}, err
	}
	candidates, why := targetCandidates(nodes, vmi)
	if len(candidates) == 0 {
		setWaiting(f, v1alpha1.ReasonNoTargetNode, fmt.Sprintf(
			"no node may receive VMI %s: %s; add capacity or wait for suspects to leave", s.victimKey(), why))
		return ctrl.Result{RequeueAfter: r.Options.WaitRequeue}, nil
	}

	limit := int(s.response.MaxConcurrentMigrations)
	v, err := r.gate.Reserve(s.now, f.Namespace+"/"+name, s.victimKey(), f.Name, limit, func() ([]virtv1.VirtualMachineInstanceMigration, error) {
		var list virtv1.VirtualMachineInstanceMigrationList
		if err := r.List(ctx, &list, client.MatchingLabels{v1alpha1.LabelManagedBy: v1alpha1.ManagedByValue}); err != nil {
			return nil, fmt.Errorf("list sidewatch migrations: %w", err)
		}
		unfinished := list.Items[:0]
		for _, m := range list.Items {
			if !m.IsFinal() {
				unfinished = append(unfinished, m)
			}
		}
		return unfinished, nil
	})
	if err != nil {
		return ctrl.Result{}, err
	}
	switch {
	case v.Busy != "":
		setWaiting(f, v1alpha1.ReasonVictimAlreadyMigrating, fmt.Sprintf(
			"migration %s of VMI %s is in progress; sidewatch waits for it to end", v.Busy, s.victimKey()))
		return ctrl.Result{RequeueAfter: r.Options.WaitRequeue}, nil
	case !v.OK:
		setWaiting(f, v1alpha1.ReasonMigrationThrottled, fmt.Sprintf(
			"%d sidewatch migrations are in flight and policy %s allows %d at once; waiting for one to finish",
			v.InFlight, f.Status.Policy, limit))
		return ctrl.Result{RequeueAfter: r.Options.WaitRequeue}, nil
	}

	attempt := int(mig.Attempts) + 1
	m := newMigration(f, vmi, attempt, name)
	m.Annotations[annotationCreatedAt] = s.now.UTC().Format(time.RFC3339Nano)
	m.Annotations[annotationExcluded] = strings.Join(sortedNodes(excluded), ",")
	if err := controllerutil.SetControllerReference(f, m, r.Scheme); err != nil {
		r.gate.Release(f.Namespace + "/" + name)
		return ctrl.Result{}, err
	}
	err = r.Create(ctx, m)
	switch {
	case err == nil:
	case apierrors.IsAlreadyExists(err):
		// A pass before a restart created it; it is ours by name, which
		// embeds the finding's uid and the attempt.
	case apierrors.IsForbidden(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err):
		// KubeVirt's admission refused the migration: that attempt failed.
		r.gate.Release(f.Namespace + "/" + name)
		mig.Attempts = int32(attempt)
		mig.Name = name
		mig.SourceNode = vmi.Status.NodeName
		mig.ExcludedNodes = sortedNodes(excluded)
		mig.StartTime = &metav1.Time{Time: s.now}
		mig.Result = ""
		r.recordFailure(s, s.now, "the API server refused the migration: "+err.Error())
		if s.done {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{RequeueAfter: f.Status.Migration.NextAttemptTime.Sub(s.now)}, nil
	default:
		r.gate.Release(f.Namespace + "/" + name)
		return ctrl.Result{}, fmt.Errorf("create migration %s: %w", name, err)
	}

	// Act first, record next: the status of this pass is not written. The
	// migration's watch event (or the short requeue) brings the next pass,
	// which adopts the migration and writes the whole status. Under a burst
	// of findings, every worker thus creates migrations before any spends a
	// round trip on a status write.
	logf.FromContext(ctx).V(1).Info("created migration", "migration", name, "attempt", attempt, "candidates", len(candidates))
	s.skipStatus = true
	return ctrl.Result{RequeueAfter: r.Options.ConflictRetry}, nil
}

// recordSuccess notes a finished, successful migration.
func (r *ThreatFindingReconciler) recordSuccess(s *findingScope, m *virtv1.VirtualMachineInstanceMigration) {
	f, mig := s.finding, s.finding.Status.Migration
	target := s.vmi.Status.NodeName
	if (target == "" || target == mig.SourceNode) && m.Status.MigrationState != nil {
		target = m.Status.MigrationState.TargetNode
	}
	end := finishedAt(m, s.now)
	mig.TargetNode = target
	mig.Result = resultSucceeded
	mig.CompletionTime = &metav1.Time{Time: end}
	mig.NextAttemptTime = nil
	d := end.Sub(m.CreationTimestamp.Time)
	if d < 0 {
		d = 0
	}
	mig.Duration = &metav1.Duration{Duration: d}
	msg := fmt.Sprintf("migration %s moved VMI %s from node %s to node %s in %s",
		m.Name, s.victimKey(), mig.SourceNode, target, d.Round(time.Second))
	setMigrating(f, false, v1alpha1.ReasonMigrationSucceeded, msg)
	setMitigated(f, true, v1alpha1.ReasonMigrationSucceeded, msg)
	s.done = true
}

// recordFailure notes a failed attempt and schedules the next one, or gives
// up when the policy's attempts are spent.
func (r *ThreatFindingReconciler) recordFailure(s *findingScope, end time.Time, reason string) {
	f, mig := s.finding, s.finding.Status.Migration
	if len(reason) > 1024 {
		reason = reason[:1021] + "..."
	}
	mig.Result = resultFailed
	mig.CompletionTime = &metav1.Time{Time: end}
	mig.LastFailure = reason
	mig.Duration = nil
	maxAttempts := s.response.MaxMigrationAttempts
	if mig.Attempts >= maxAttempts {
		mig.NextAttemptTime = nil
		msg := fmt.Sprintf("all %d attempts to migrate VMI %s failed, the last because: %s; fix the cause and move the VMI by hand (virtctl migrate %s)",
			maxAttempts, s.victimKey(), reason, f.Spec.Victim.Name)
		setMigrating(f, false, v1alpha1.ReasonMigrationFailed, msg)
		setMitigated(f, false, v1alpha1.ReasonMigrationFailed, msg)
		s.done = true
		return
	}
	next := end.Add(retryBackoff(s.response.RetryBackoff.Duration, int(mig.Attempts)))
	mig.NextAttemptTime = &metav1.Time{Time: next}
}

// recordVanished handles a current migration that no longer exists (deleted
// by someone, or garbage-collected by KubeVirt while the operator was
// away): judge by where the victim is now.
func (r *ThreatFindingReconciler) recordVanished(s *findingScope) {
	mig := s.finding.Status.Migration
	if node := s.vmi.Status.NodeName; node != "" && mig.SourceNode != "" && node != mig.SourceNode {
		f := s.finding
		mig.TargetNode = node
		mig.Result = resultSucceeded
		mig.CompletionTime = &metav1.Time{Time: s.now}
		mig.NextAttemptTime = nil
		mig.Duration = nil // unknown: the record of its end is gone
		msg := fmt.Sprintf("VMI %s left node %s for node %s; migration %s is gone, so its duration is unknown",
			s.victimKey(), mig.SourceNode, node, mig.Name)
		setMigrating(f, false, v1alpha1.ReasonMigrationSucceeded, msg)
		setMitigated(f, true, v1alpha1.ReasonMigrationSucceeded, msg)
		s.done = true
		return
	}
	r.recordFailure(s, s.now, fmt.Sprintf("migration %s disappeared before it finished and VMI %s is still on node %s",
		mig.Name, s.victimKey(), s.vmi.Status.NodeName))
}

// retryBackoff is the wait after the n-th failed attempt: base, doubled
// after each further failure.
func retryBackoff(base time.Duration, failures int) time.Duration {
	if failures < 1 {
		failures = 1
	}
	d := base
	for i := 1; i < failures && d < 24*time.Hour; i++ {
		d *= 2
	}
	return d
}

// currentMigration returns the migration status.migration.name names, from
// the cache or, if the cache does not have it (yet), from the API server;
// nil when it does not exist.
func (r *ThreatFindingReconciler) currentMigration(ctx context.Context, s *findingScope) (*virtv1.VirtualMachineInstanceMigration, error) {
	name := s.finding.Status.Migration.Name
	for _, m := range s.migrations {
		if m.Name == name {
			return m, nil
		}
	}
	m := &virtv1.VirtualMachineInstanceMigration{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: s.finding.Namespace, Name: name}, m)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("get migration %s: %w", name, err)
	}
	if controllingFinding(m) != string(s.finding.UID) {
		return nil, nil
	}
	return m, nil
}

// ownedMigrations lists the finding's migrations, oldest attempt first.
func (r *ThreatFindingReconciler) ownedMigrations(ctx context.Context, f *v1alpha1.ThreatFinding) ([]*virtv1.VirtualMachineInstanceMigration, error) {
	var list virtv1.VirtualMachineInstanceMigrationList
	if err := r.List(ctx, &list, client.InNamespace(f.Namespace), client.MatchingFields{indexMigrationFinding: string(f.UID)}); err != nil {
		return nil, fmt.Errorf("list migrations of finding %s: %w", f.Name, err)
	}
	out := make([]*virtv1.VirtualMachineInstanceMigration, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, &list.Items[i])
	}
	sort.Slice(out, func(i, j int) bool { return attemptOf(out[i]) < attemptOf(out[j]) })
	return out, nil
}

// victimBusy names a migration of the victim in flight that is not this
// finding's, or "".
func (r *ThreatFindingReconciler) victimBusy(ctx context.Context, s *findingScope, next string) (string, error) {
	ms, err := r.victimMigrations(ctx, s)
	if err != nil {
		return "", err
	}
	for _, m := range ms {
		if !m.IsFinal() && controllingFinding(m) != string(s.finding.UID) {
			return m.Name, nil
		}
	}
	if m, _ := r.gate.ReservedFor(s.victimKey(), s.finding.Namespace+"/"+next, s.now); m != "" {
		return m, nil
	}
	return "", nil
}

// lastMove is when sidewatch last moved the victim successfully, and by
// which finding or migration, from other findings' records and from
// sidewatch migrations still present.
func (r *ThreatFindingReconciler) lastMove(ctx context.Context, s *findingScope) (time.Time, string, error) {
	f := s.finding
	var last time.Time
	by := ""
	var peers v1alpha1.ThreatFindingList
	if err := r.List(ctx, &peers, client.InNamespace(f.Namespace), client.MatchingFields{indexFindingVictim: f.Spec.Victim.Name}); err != nil {
		return last, by, fmt.Errorf("list findings about %s: %w", s.victimKey(), err)
	}
	for i := range peers.Items {
		p := &peers.Items[i]
		if p.UID == f.UID || !sameVictim(f, p, s.vmi) || p.Status.Migration == nil ||
			p.Status.Migration.Result != resultSucceeded || p.Status.Migration.CompletionTime == nil {
			continue
		}
		if t := p.Status.Migration.CompletionTime.Time; t.After(last) && !t.Before(s.vmi.CreationTimestamp.Time) {
			last, by = t, "finding "+p.Name
		}
	}
	ms, err := r.victimMigrations(ctx, s)
	if err != nil {
		return last, by, err
	}
	for _, m := range ms {
		if m.Labels[v1alpha1.LabelManagedBy] != v1alpha1.ManagedByValue || m.Status.Phase != virtv1.MigrationSucceeded ||
			m.CreationTimestamp.Before(&s.vmi.CreationTimestamp) {
			continue
		}
		if t := finishedAt(m, time.Time{}); t.After(last) {
			last, by = t, "migration "+m.Name
		}
	}
	return last, by, nil
}

// targetCandidates lists the nodes a migration of vmi could land on: allowed
// by the labels, Ready, schedulable, matching the VMI's own nodeSelector,
// and not where it runs. When there are none it says why.
func targetCandidates(nodes []TargetNode, vmi *virtv1.VirtualMachineInstance) ([]string, string) {
	var out []string
	excluded, unready, mismatched := 0, 0, 0
	for _, tn := range nodes {
		n := tn.Node
		if n.Name == vmi.Status.NodeName {
			continue
		}
		switch {
		case !tn.Allowed:
			excluded++
		case n.Spec.Unschedulable || !nodeReady(n):
			unready++
		case !labels.SelectorFromSet(vmi.Spec.NodeSelector).Matches(labels.Set(n.Labels)):
			mismatched++
		default:
			out = append(out, n.Name)
		}
	}
	why := fmt.Sprintf("of %d other nodes, %d are excluded (affected nodes or hosting suspects), %d are unschedulable or not Ready, %d do not match the VMI's nodeSelector",
		max(len(nodes)-1, 0), excluded, unready, mismatched)
	return out, why
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// liveMigratable returns the VMI's LiveMigratable condition, or nil.
func liveMigratable(vmi *virtv1.VirtualMachineInstance) *virtv1.VirtualMachineInstanceCondition {
	for i := range vmi.Status.Conditions {
		if vmi.Status.Conditions[i].Type == virtv1.VirtualMachineInstanceIsMigratable {
			return &vmi.Status.Conditions[i]
		}
	}
	return nil
}

// migrationName is the deterministic name of a finding's attempt: the same
// finding and attempt always give the same name, so a create repeated
// after a restart finds the first one instead of making a second.
func migrationName(f *v1alpha1.ThreatFinding, attempt int) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(f.UID))
	base := f.Name
	if len(base) > 40 {
		base = base[:40]
	}
	base = strings.TrimRight(base, "-.")
	return fmt.Sprintf("sidewatch-%s-%08x-%d", base, h.Sum32(), attempt)
}

// newMigration builds the migration of attempt for f's victim.
func newMigration(f *v1alpha1.ThreatFinding, vmi *virtv1.VirtualMachineInstance, attempt int, name string) *virtv1.VirtualMachineInstanceMigration {
	labels := map[string]string{
		v1alpha1.LabelManagedBy: v1alpha1.ManagedByValue,
		v1alpha1.LabelAttempt:   strconv.Itoa(attempt),
	}
	// Names longer than a label value allows are left out; the owner
	// reference always names the finding.
	if len(validation.IsValidLabelValue(f.Name)) == 0 {
		labels[v1alpha1.LabelFinding] = f.Name
	}
	if len(validation.IsValidLabelValue(vmi.Name)) == 0 {
		labels[v1alpha1.LabelVictim] = vmi.Name
	}
	return &virtv1.VirtualMachineInstanceMigration{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: f.Namespace, Labels: labels,
			Annotations: map[string]string{annotationSourceNode: vmi.Status.NodeName},
		},
		Spec: virtv1.VirtualMachineInstanceMigrationSpec{
			VMIName:           vmi.Name,
			AddedNodeSelector: map[string]string{v1alpha1.LabelMigrationTarget: v1alpha1.MigrationTargetAllowed},
		},
	}
}

// attemptOf is the attempt number a sidewatch migration carries, 0 if none.
func attemptOf(m *virtv1.VirtualMachineInstanceMigration) int {
	n, err := strconv.Atoi(m.Labels[v1alpha1.LabelAttempt])
	if err != nil {
		return 0
	}
	return n
}

// finishedAt is when a finished migration reached its final phase, from
// its phase transitions or its migration state; def when neither says.
func finishedAt(m *virtv1.VirtualMachineInstanceMigration, def time.Time) time.Time {
	for i := len(m.Status.PhaseTransitionTimestamps) - 1; i >= 0; i-- {
		t := m.Status.PhaseTransitionTimestamps[i]
		if t.Phase == virtv1.MigrationSucceeded || t.Phase == virtv1.MigrationFailed {
			return t.PhaseTransitionTimestamp.Time
		}
	}
	if ms := m.Status.MigrationState; ms != nil && ms.EndTimestamp != nil {
		return ms.EndTimestamp.Time
	}
	return def
}

// failureReason explains a failed migration from what KubeVirt recorded.
func failureReason(m *virtv1.VirtualMachineInstanceMigration, vmi *virtv1.VirtualMachineInstance) string {
	if ms := m.Status.MigrationState; ms != nil && ms.FailureReason != "" {
		return ms.FailureReason
	}
	if vmi != nil {
		if ms := vmi.Status.MigrationState; ms != nil && ms.MigrationUID == m.UID && ms.FailureReason != "" {
			return ms.FailureReason
		}
	}
	for _, c := range m.Status.Conditions {
		if c.Status == corev1.ConditionTrue && c.Message != "" {
			return string(c.Type) + ": " + c.Message
		}
	}
	return fmt.Sprintf("KubeVirt recorded no reason; see kubectl describe vmim %s", m.Name)
}

// mergeCandidate is one unresolved finding about a victim.
type mergeCandidate struct {
	Name    string
	Created time.Time
	// InFlight: it owns an unfinished migration of the victim.
	InFlight bool
	// Attempted: it has attempted a migration before.
	Attempted bool
}

// choosePrimary picks the finding whose migration answers all findings
// about one victim: the one whose migration is in flight, else one that
// has attempted a migration, else the oldest; names break ties.
func choosePrimary(cands []mergeCandidate) string {
	if len(cands) == 0 {
		return ""
	}
	best := cands[0]
	for _, c := range cands[1:] {
		if primaryBefore(c, best) {
			best = c
		}
	}
	return best.Name
}

func primaryBefore(a, b mergeCandidate) bool {
	if a.InFlight != b.InFlight {
		return a.InFlight
	}
	if a.Attempted != b.Attempted {
		return a.Attempted
	}
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	return a.Name < b.Name
}
