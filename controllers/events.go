package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Event reasons, on the finding and on the victim VMI.
const (
	EventThreatDetected     = "ThreatDetected"
	EventMigrationStarted   = "MigrationStarted"
	EventMigrationSucceeded = "MigrationSucceeded"
	EventMigrationFailed    = "MigrationFailed"
	EventMitigationFailed   = "MitigationFailed"
	EventMigrationDeferred  = "MigrationDeferred"
	EventMigrationSkipped   = "MigrationSkipped"
)

// notice is one Event to record.
type notice struct {
	Type   string // corev1.EventTypeNormal or EventTypeWarning
	Reason string
	Action string
	Note   string
}

// waitReasons are the Migrating reasons that mean "not yet".
var waitReasons = map[string]bool{
	v1alpha1.ReasonMigrationThrottled:     true,
	v1alpha1.ReasonCooldown:               true,
	v1alpha1.ReasonVictimAlreadyMigrating: true,
	v1alpha1.ReasonNoTargetNode:           true,
}

// notices lists the Events a status change deserves. It compares the
// status as read with the status written, so each transition is announced
// once: when its write succeeds.
func notices(before, after *v1alpha1.ThreatFinding) []notice {
	var out []notice
	b, a := before.Status, after.Status
	if b.Phase == "" && a.Phase != "" {
		out = append(out, notice{corev1.EventTypeWarning, EventThreatDetected, "Detect", detectedNote(after)})
	}
	bm, am := migrationOf(b), migrationOf(a)
	if am.Attempts > bm.Attempts && am.Result == "" {
		out = append(out, notice{corev1.EventTypeNormal, EventMigrationStarted, "Migrate", fmt.Sprintf(
			"attempt %d: migration %s moves VMI %s off node %s (excluded nodes: %s)",
			am.Attempts, am.Name, after.Spec.Victim.Name, am.SourceNode, listOrNone(am.ExcludedNodes))})
	}
	resultChanged := am.Result != bm.Result || am.Attempts != bm.Attempts
	if resultChanged && am.Result == resultSucceeded {
		d := "an unknown time"
		if am.Duration != nil {
			d = am.Duration.Round(time.Second).String()
		}
		out = append(out, notice{corev1.EventTypeNormal, EventMigrationSucceeded, "Migrate", fmt.Sprintf(
			"migration %s moved VMI %s from node %s to node %s in %s", am.Name, after.Spec.Victim.Name, am.SourceNode, am.TargetNode, d)})
	}
	if failedAttempts(am) > failedAttempts(bm) {
		// Usually the current attempt failed; when the pass also started the
		// next one at once (its backoff had passed), the previous did.
		attempt, next := am.Attempts, "no attempts left"
		switch {
		case am.Result != resultFailed:
			attempt, next = am.Attempts-1, fmt.Sprintf("attempt %d started", am.Attempts)
		case am.NextAttemptTime != nil:
			next = "next attempt at " + am.NextAttemptTime.UTC().Format(time.RFC3339)
		}
		out = append(out, notice{corev1.EventTypeWarning, EventMigrationFailed, "Migrate", fmt.Sprintf(
			"attempt %d failed: %s; %s", attempt, am.LastFailure, next)})
	}
	if c := meta.FindStatusCondition(a.Conditions, v1alpha1.FindingMigrating); c != nil && waitReasons[c.Reason] {
		if old := meta.FindStatusCondition(b.Conditions, v1alpha1.FindingMigrating); old == nil || old.Reason != c.Reason {
			out = append(out, notice{corev1.EventTypeNormal, EventMigrationDeferred, "Defer", c.Reason + ": " + c.Message})
		}
	}
	if a.Phase.Final() && !b.Phase.Final() {
		mit := meta.FindStatusCondition(a.Conditions, v1alpha1.FindingMitigated)
		switch {
		case a.Phase == v1alpha1.PhaseMitigationFailed && mit != nil && mit.Reason == v1alpha1.ReasonNotLiveMigratable:
			out = append(out, notice{corev1.EventTypeWarning, EventMigrationSkipped, "Skip", mit.Reason + ": " + mit.Message})
		case a.Phase == v1alpha1.PhaseMitigationFailed:
			out = append(out, notice{corev1.EventTypeWarning, EventMitigationFailed, "Mitigate", a.Message})
		case a.Phase == v1alpha1.PhaseSuppressed:
			out = append(out, notice{corev1.EventTypeNormal, EventMigrationSkipped, "Skip", suppressedReason(a) + ": " + a.Message})
		case a.Phase == v1alpha1.PhaseMitigated && mit != nil && mit.Reason != v1alpha1.ReasonMigrationSucceeded:
			out = append(out, notice{corev1.EventTypeNormal, EventMigrationSkipped, "Skip", mit.Reason + ": " + mit.Message})
		}
	}
	return out
}

func detectedNote(f *v1alpha1.ThreatFinding) string {
	var suspects []string
	for _, s := range f.Spec.Suspects {
		suspects = append(suspects, s.Namespace+"/"+s.Name)
	}
	return fmt.Sprintf("%s (severity %s, score %.2f) against VMI %s on node %s; suspects: %s; response: %s",
		f.Spec.Type, f.Spec.Severity, f.Spec.Score, f.Spec.Victim.Name, f.Spec.Node, listOrNone(suspects), f.Status.Phase)
}

func suppressedReason(st v1alpha1.ThreatFindingStatus) string {
	if st.MergedInto != "" {
		return v1alpha1.ReasonMergedIntoFinding
	}
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.FindingActionable); c != nil {
		return c.Reason
	}
	return string(v1alpha1.PhaseSuppressed)
}

// failedAttempts counts the attempts a migration record shows as failed:
// a new attempt starts only after the previous one failed, so all but the
// last did, and the last too when its result says so.
func failedAttempts(m v1alpha1.MigrationStatus) int {
	if m.Attempts <= 0 {
		return 0
	}
	n := int(m.Attempts) - 1
	if m.Result == resultFailed {
		n++
	}
	return n
}

func migrationOf(st v1alpha1.ThreatFindingStatus) v1alpha1.MigrationStatus {
	if st.Migration == nil {
		return v1alpha1.MigrationStatus{}
	}
	return *st.Migration
}

func listOrNone(items []string) string {
	if len(items) == 0 {
		return "none"
	}
	if len(items) > 10 {
		return strings.Join(items[:10], ", ") + fmt.Sprintf(" and %d more", len(items)-10)
	}
	return strings.Join(items, ", ")
}

// announce records the Events and metrics of a pass whose status write
// succeeded.
func (r *ThreatFindingReconciler) announce(ctx context.Context, s *findingScope) {
	log := logf.FromContext(ctx)
	f := s.finding
	var vmi runtime.Object
	if s.vmi != nil {
		vmi = s.vmi
	}
	for _, n := range notices(s.before, f) {
		log.Info("recorded event", "reason", n.Reason, "note", n.Note)
		if r.Recorder == nil {
			continue
		}
		r.Recorder.Eventf(f, vmi, n.Type, n.Reason, n.Action, "%s", n.Note)
		if s.vmi != nil {
			r.Recorder.Eventf(s.vmi, f, n.Type, n.Reason, n.Action, "sidewatch finding %s: %s", f.Name, n.Note)
		}
	}
	r.observe(s)
}

// observe moves the counters and histograms by the pass's transitions.
func (r *ThreatFindingReconciler) observe(s *findingScope) {
	if r.Metrics == nil {
		return
	}
	f := s.finding
	bm, am := migrationOf(s.before.Status), migrationOf(f.Status)
	if started := int(am.Attempts) - int(bm.Attempts); started > 0 {
		r.Metrics.MigrationsStarted.Add(float64(started))
		if bm.Attempts == 0 && am.StartTime != nil {
			r.Metrics.CreationLatency.Observe(am.StartTime.Sub(r.createdAt(f)).Seconds())
			r.seen.forget(f.UID)
		}
	}
	if resultChanged := am.Result != bm.Result || am.Attempts != bm.Attempts; resultChanged && am.Result == resultSucceeded {
		r.Metrics.MigrationsSucceeded.Inc()
		if am.Duration != nil {
			r.Metrics.MigrationDuration.Observe(am.Duration.Seconds())
		}
	}
	if n := failedAttempts(am) - failedAttempts(bm); n > 0 {
		r.Metrics.MigrationsFailed.Add(float64(n))
	}
}
