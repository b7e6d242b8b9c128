package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// derivePhase computes a finding's phase from its conditions and migration
// record. The phase is never an input to any decision: it only summarises.
//
//	Actionable=False or mergedInto set        -> Suppressed
//	Mitigated=True                            -> Mitigated
//	Mitigated=False with a reason that gives up -> MitigationFailed
//	a migration was attempted                 -> Mitigating
//	otherwise                                 -> Detected
func derivePhase(st v1alpha1.ThreatFindingStatus) v1alpha1.FindingPhase {
	if meta.IsStatusConditionFalse(st.Conditions, v1alpha1.FindingActionable) || st.MergedInto != "" {
		return v1alpha1.PhaseSuppressed
	}
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.FindingMitigated); c != nil {
		if c.Status == metav1.ConditionTrue {
			return v1alpha1.PhaseMitigated
		}
		if givesUp(c.Reason) {
			return v1alpha1.PhaseMitigationFailed
		}
	}
	if st.Migration != nil && st.Migration.Attempts > 0 {
		return v1alpha1.PhaseMitigating
	}
	return v1alpha1.PhaseDetected
}

// givesUp reports whether Mitigated=False with this reason is final.
func givesUp(reason string) bool {
	return reason == v1alpha1.ReasonMigrationFailed || reason == v1alpha1.ReasonNotLiveMigratable
}

// reopenable reports whether a resolved finding should be judged again: it
// was suppressed only because no policy cared or it was not severe enough,
// and the agent has since changed its spec (a severity raised by further
// detections deserves a response).
func reopenable(f *v1alpha1.ThreatFinding) bool {
	if f.Status.Phase != v1alpha1.PhaseSuppressed || f.Generation <= f.Status.ObservedGeneration {
		return false
	}
	c := meta.FindStatusCondition(f.Status.Conditions, v1alpha1.FindingActionable)
	return c != nil && c.Status == metav1.ConditionFalse &&
		(c.Reason == v1alpha1.ReasonNoPolicy || c.Reason == v1alpha1.ReasonBelowMinSeverity)
}

// setCondition sets one condition of the finding, stamped with its
// generation.
func setCondition(f *v1alpha1.ThreatFinding, typ string, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(&f.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: message, ObservedGeneration: f.Generation,
	})
}

func setActionable(f *v1alpha1.ThreatFinding, ok bool, reason, message string) {
	setCondition(f, v1alpha1.FindingActionable, boolStatus(ok), reason, message)
}

func setMigrating(f *v1alpha1.ThreatFinding, ok bool, reason, message string) {
	setCondition(f, v1alpha1.FindingMigrating, boolStatus(ok), reason, message)
}

func setMitigated(f *v1alpha1.ThreatFinding, ok bool, reason, message string) {
	setCondition(f, v1alpha1.FindingMitigated, boolStatus(ok), reason, message)
}

// setWaiting records why the migration has not started yet.
func setWaiting(f *v1alpha1.ThreatFinding, reason, message string) {
	setMigrating(f, false, reason, message)
	setMitigated(f, false, v1alpha1.ReasonMitigationPending, message)
}

func boolStatus(b bool) metav1.ConditionStatus {
	if b {
		return metav1.ConditionTrue
	}
	return metav1.ConditionFalse
}

// summary is status.message: the condition a person should read first.
func summary(st v1alpha1.ThreatFindingStatus) string {
	get := func(t string) *metav1.Condition { return meta.FindStatusCondition(st.Conditions, t) }
	if c := get(v1alpha1.FindingActionable); c != nil && c.Status == metav1.ConditionFalse {
		return c.Message
	}
	if c := get(v1alpha1.FindingMitigated); c != nil && (c.Status == metav1.ConditionTrue || givesUp(c.Reason) || c.Reason == v1alpha1.ReasonMergedIntoFinding) {
		return c.Message
	}
	if c := get(v1alpha1.FindingMigrating); c != nil && c.Message != "" {
		return c.Message
	}
	if c := get(v1alpha1.FindingActionable); c != nil {
		return c.Message
	}
	return ""
}
