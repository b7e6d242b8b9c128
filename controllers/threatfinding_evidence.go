package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/sidewatch/sidewatch/internal/evidence"
)

// EventEvidenceRefInvalid is recorded when the agent's evidence reference
// on a finding does not hold up.
const EventEvidenceRefInvalid = "EvidenceRefInvalid"

// reconcileEvidence copies the evidence snapshot reference the agent
// recorded on the finding into status.evidence. The agent may not write
// status, so it leaves the reference in an annotation (docs/forensics.md);
// the operator checks it before a reader of the status trusts it.
func (r *ThreatFindingReconciler) reconcileEvidence(ctx context.Context, s *findingScope) {
	f := s.finding
	ref, err := evidence.RefFromAnnotation(f)
	if err != nil {
		logf.FromContext(ctx).Info("ignoring the finding's evidence reference", "reason", err.Error())
		if r.Recorder != nil {
			r.Recorder.Eventf(f, nil, corev1.EventTypeWarning, EventEvidenceRefInvalid, "Evidence", "%v", err)
		}
		return
	}
	if ref != nil && !equality.Semantic.DeepEqual(f.Status.Evidence, ref) {
		f.Status.Evidence = ref
	}
}
