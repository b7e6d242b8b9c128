package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
)

// ThreatFindingReconciler responds to the findings the node agents write:
// it finds the policy that governs the victim, decides the response, and
// for action Migrate live-migrates the victim off the affected node with
// one VirtualMachineInstanceMigration at a time, following it to its end.
//
// Deleting a finding needs no cleanup of ours: its migrations carry an owner
// reference (garbage-collected with it), and the node labels are recomputed
// from the findings that remain. So there is no finalizer, which also keeps
// findings deletable when the operator is not running.
type ThreatFindingReconciler struct {
	client.Client
	// APIReader reads past the cache where a stale cache would mislead:
	// confirming that a victim or a migration is really gone.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	Metrics   *Metrics
	Labeler   *TargetLabeler
	Options   Options

	gate   *migrationGate
	seen   *firstSeen
	writes *writeExpectations
}

// +kubebuilder:rbac:groups=sidewatch.io,resources=threatfindings,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=sidewatch.io,resources=threatfindings/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=sidewatch.io,resources=threatfindings/finalizers,verbs=update
// +kubebuilder:rbac:groups=sidewatch.io,resources=sidechannelpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachineinstances,verbs=get;list;watch
// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachineinstancemigrations,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// findingScope holds what one pass over one finding has learnt.
type findingScope struct {
	finding *v1alpha1.ThreatFinding
	// before is the finding as read, for the status patch and to tell
	// transitions apart.
	before *v1alpha1.ThreatFinding
	now    time.Time

	vmi      *virtv1.VirtualMachineInstance
	policy   *v1alpha1.SideChannelPolicy
	response v1alpha1.ResponseSpec
	// migrations are this finding's own migrations, by attempt.
	migrations []*virtv1.VirtualMachineInstanceMigration

	// staleVersions are the resourceVersions the pass's status write made
	// stale (the one read, and any seen while retrying a conflict).
	staleVersions []string

	// skipStatus: the pass created a migration and leaves the status to the
	// next pass.
	skipStatus bool

	// done stops the remaining steps: the pass reached a decision.
	done bool
	// deleted: the pass deleted the finding (retention), nothing to patch.
	deleted bool
}

func (s *findingScope) victimKey() string {
	return s.finding.Namespace + "/" + s.finding.Spec.Victim.Name
}

// findingStep is one stage of a pass.
type findingStep func(ctx context.Context, s *findingScope) (ctrl.Result, error)

// Reconcile runs one pass over one finding.
func (r *ThreatFindingReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	log := logf.FromContext(ctx)
	f := &v1alpha1.ThreatFinding{}
	if err := r.Get(ctx, req.NamespacedName, f); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if f.DeletionTimestamp != nil {
		r.seen.forget(f.UID)
		r.writes.forget(f.UID)
		return ctrl.Result{}, nil
	}
	// The cache has not shown our last status write yet: a pass now would
	// act on what we already changed. Wait for the watch to catch up.
	if r.writes.pending(f.UID, f.ResourceVersion, r.Options.Clock.Now()) {
		return ctrl.Result{RequeueAfter: r.Options.ConflictRetry}, nil
	}
	s := &findingScope{finding: f, before: f.DeepCopy(), now: r.Options.Clock.Now(), staleVersions: []string{f.ResourceVersion}}

	// Every pass ends here: derive the summary fields, write the status
	// once, and only when that write succeeded tell the world (Events,
	// metrics). The write carries the resourceVersion read, so a pass that
	// acted on a stale copy fails with a conflict and runs again instead
	// of overwriting newer status or announcing a transition twice.
	defer func() {
		if s.deleted || s.skipStatus {
			return
		}
		r.summarise(s, retErr == nil)
		if f.Status.ResolvedTime != nil && retErr == nil {
			// Come back when the retention period ends.
			expires := f.Status.ResolvedTime.Add(r.Options.FindingTTL).Sub(s.now)
			res = lowestRequeue(res, ctrl.Result{RequeueAfter: max(expires, time.Millisecond)})
		}
		if equality.Semantic.DeepEqual(s.before.Status, f.Status) {
			return
		}
		err := r.writeStatus(ctx, s)
		switch {
		case err == nil:
			r.writes.expect(f.UID, s.now, s.staleVersions...)
			r.announce(ctx, s)
		case apierrors.IsConflict(err), apierrors.IsNotFound(err):
			log.V(1).Info("finding changed while reconciling; looking again", "reason", err.Error())
			if retErr == nil {
				res = ctrl.Result{RequeueAfter: r.Options.ConflictRetry}
			}
		default:
			res = ctrl.Result{}
			retErr = errors.Join(retErr, fmt.Errorf("patch status: %w", err))
		}
	}()

	if reopenable(f) {
		log.Info("finding changed after it was suppressed; judging it again", "generation", f.Generation)
		f.Status.Conditions = nil
		f.Status.ResolvedTime = nil
	}
	r.reconcileEvidence(ctx, s)
	if f.Status.Phase.Final() && f.Status.Conditions != nil {
		return r.reconcileResolved(ctx, s)
	}
	return r.reconcileNormal(ctx, s)
}

// statusWriteAttempts bounds how often one pass retries its status write
// against a finding whose spec keeps changing.
const statusWriteAttempts = 4

// writeStatus patches the status computed by the pass, guarded by the
// resourceVersion it read. The agent updates a finding's spec as it merges
// detections, which bumps the resourceVersion without touching the status;
// such a conflict is retried at once on the latest object, because a status
// computed from an unchanged status is still right. When the status itself
// changed meanwhile (the cache was behind), the pass must start over: the
// conflict is returned.
func (r *ThreatFindingReconciler) writeStatus(ctx context.Context, s *findingScope) error {
	f := s.finding
	err := r.Status().Patch(ctx, f, client.MergeFromWithOptions(s.before, client.MergeFromWithOptimisticLock{}))
	for i := 1; i < statusWriteAttempts && apierrors.IsConflict(err); i++ {
		latest := &v1alpha1.ThreatFinding{}
		if gerr := r.APIReader.Get(ctx, client.ObjectKeyFromObject(f), latest); gerr != nil {
			return gerr
		}
		if !equality.Semantic.DeepEqual(latest.Status, s.before.Status) {
			return err
		}
		s.staleVersions = append(s.staleVersions, latest.ResourceVersion)
		want := latest.DeepCopy()
		want.Status = f.Status
		err = r.Status().Patch(ctx, want, client.MergeFromWithOptions(latest, client.MergeFromWithOptimisticLock{}))
		if err == nil {
			f.ResourceVersion = want.ResourceVersion
		}
	}
	return err
}

// reconcileNormal runs the steps of an unresolved finding, keeping the
// earliest requeue any of them asks for.
func (r *ThreatFindingReconciler) reconcileNormal(ctx context.Context, s *findingScope) (ctrl.Result, error) {
	var res ctrl.Result
	for _, step := range []findingStep{r.reconcileVictim, r.reconcilePolicy, r.reconcileMerge, r.reconcileMigration} {
		stepRes, err := step(ctx, s)
		if err != nil {
			return ctrl.Result{}, err
		}
		res = lowestRequeue(res, stepRes)
		if s.done {
			break
		}
	}
	return res, nil
}

// reconcileResolved keeps a resolved finding for the retention period and
// then deletes it.
func (r *ThreatFindingReconciler) reconcileResolved(ctx context.Context, s *findingScope) (ctrl.Result, error) {
	f := s.finding
	r.seen.forget(f.UID)
	resolved := s.now
	if f.Status.ResolvedTime != nil {
		resolved = f.Status.ResolvedTime.Time
	}
	expires := resolved.Add(r.Options.FindingTTL)
	if s.now.Before(expires) {
		return ctrl.Result{RequeueAfter: expires.Sub(s.now)}, nil
	}
	err := r.Delete(ctx, f, client.Preconditions{UID: &f.UID, ResourceVersion: &f.ResourceVersion})
	switch {
	case err == nil, apierrors.IsNotFound(err):
		logf.FromContext(ctx).Info("deleted resolved finding after its retention period",
			"phase", f.Status.Phase, "resolved", resolved.UTC().Format(time.RFC3339), "ttl", r.Options.FindingTTL)
		s.deleted = true
		return ctrl.Result{}, nil
	case apierrors.IsConflict(err):
		return ctrl.Result{RequeueAfter: r.Options.ConflictRetry}, nil
	}
	return ctrl.Result{}, fmt.Errorf("delete expired finding: %w", err)
}

// reconcileVictim loads the victim VMI; a victim that is gone ends the
// finding.
func (r *ThreatFindingReconciler) reconcileVictim(ctx context.Context, s *findingScope) (ctrl.Result, error) {
	f := s.finding
	key := types.NamespacedName{Namespace: f.Namespace, Name: f.Spec.Victim.Name}
	vmi := &virtv1.VirtualMachineInstance{}
	err := r.Get(ctx, key, vmi)
	if apierrors.IsNotFound(err) {
		// The cache may simply not have caught up with a new VMI: ask the
		// API server before ending the finding.
		err = r.APIReader.Get(ctx, key, vmi)
	}
	gone := ""
	switch {
	case apierrors.IsNotFound(err):
		gone = fmt.Sprintf("VMI %s no longer exists: there is nothing left to protect", s.victimKey())
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("get victim VMI %s: %w", s.victimKey(), err)
	case f.Spec.Victim.UID != "" && vmi.UID != f.Spec.Victim.UID:
		gone = fmt.Sprintf("VMI %s was re-created (uid %s, the finding is about uid %s): the attacked instance no longer exists",
			s.victimKey(), vmi.UID, f.Spec.Victim.UID)
	case vmi.DeletionTimestamp != nil:
		gone = fmt.Sprintf("VMI %s is being deleted: there is nothing left to protect", s.victimKey())
	case vmi.IsFinal():
		gone = fmt.Sprintf("VMI %s has stopped (phase %s): there is nothing left to protect", s.victimKey(), vmi.Status.Phase)
	}
	if gone != "" {
		setActionable(f, false, v1alpha1.ReasonVictimGone, gone)
		if meta.IsStatusConditionTrue(f.Status.Conditions, v1alpha1.FindingMigrating) {
			setMigrating(f, false, v1alpha1.ReasonVictimGone, gone)
		}
		s.done = true
		return ctrl.Result{}, nil
	}
	s.vmi = vmi
	return ctrl.Result{}, nil
}

// reconcilePolicy finds the policy that governs the victim and decides the
// response. Once a migration has been attempted the decision stands: a
// policy edited mid-flight must not strand a half-done response.
func (r *ThreatFindingReconciler) reconcilePolicy(ctx context.Context, s *findingScope) (ctrl.Result, error) {
	f := s.finding
	if attempted(f) && f.Status.Policy != "" {
		p := &v1alpha1.SideChannelPolicy{}
		if err := r.Get(ctx, types.NamespacedName{Name: f.Status.Policy}, p); err == nil {
			s.policy = p
		} else if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("get policy %s: %w", f.Status.Policy, err)
		}
		// A deleted policy leaves the defaults for retries and backoff.
		s.response = responseOf(s.policy)
		s.response.Action = f.Status.Action
		return ctrl.Result{}, nil
	}

	var policies v1alpha1.SideChannelPolicyList
	if err := r.List(ctx, &policies); err != nil {
		return ctrl.Result{}, fmt.Errorf("list policies: %w", err)
	}
	ns := &corev1.Namespace{}
	if err := r.Get(ctx, types.NamespacedName{Name: f.Namespace}, ns); err != nil {
		return ctrl.Result{}, fmt.Errorf("get namespace %s: %w", f.Namespace, err)
	}
	nsLabels := ns.Labels
	p := governing(compilePolicies(policies.Items), nsLabels, s.vmi.Labels)
	if p == nil {
		f.Status.Policy, f.Status.Action = "", ""
		setActionable(f, false, v1alpha1.ReasonNoPolicy, fmt.Sprintf(
			"no SideChannelPolicy selects VMI %s: the finding is recorded but nothing is done; create a policy or label the VMI to protect it", s.victimKey()))
		s.done = true
		return ctrl.Result{}, nil
	}
	s.policy = p
	s.response = responseOf(p)
	f.Status.Policy = p.Name
	f.Status.Action = s.response.Action
	if !f.Spec.Severity.AtLeast(s.response.MinSeverity) {
		setActionable(f, false, v1alpha1.ReasonBelowMinSeverity, fmt.Sprintf(
			"severity %s is below policy %s's response.minSeverity %s: recorded, no response", f.Spec.Severity, p.Name, s.response.MinSeverity))
		s.done = true
		return ctrl.Result{}, nil
	}
	setActionable(f, true, v1alpha1.ReasonPolicyMatched, fmt.Sprintf(
		"policy %s governs VMI %s; severity %s meets its minSeverity %s; action %s",
		p.Name, s.victimKey(), f.Spec.Severity, s.response.MinSeverity, s.response.Action))
	if s.response.Action != v1alpha1.ActionMigrate {
		msg := fmt.Sprintf("policy %s only alerts: the finding is recorded with Events and metrics, and VMI %s stays on node %s",
			p.Name, s.victimKey(), s.vmi.Status.NodeName)
		setMigrating(f, false, v1alpha1.ReasonAlertOnly, msg)
		setMitigated(f, true, v1alpha1.ReasonAlertOnly, msg)
		s.done = true
	}
	return ctrl.Result{}, nil
}

// reconcileMerge makes several findings about one victim share one
// migration: every finding but the primary is suppressed with mergedInto
// naming the primary. See choosePrimary for the rule.
func (r *ThreatFindingReconciler) reconcileMerge(ctx context.Context, s *findingScope) (ctrl.Result, error) {
	f := s.finding
	if attempted(f) {
		return ctrl.Result{}, nil
	}
	var peers v1alpha1.ThreatFindingList
	if err := r.List(ctx, &peers, client.InNamespace(f.Namespace), client.MatchingFields{indexFindingVictim: f.Spec.Victim.Name}); err != nil {
		return ctrl.Result{}, fmt.Errorf("list findings about %s: %w", s.victimKey(), err)
	}
	owners, err := r.inFlightOwners(ctx, s)
	if err != nil {
		return ctrl.Result{}, err
	}
	cands := []mergeCandidate{{Name: f.Name, Created: f.CreationTimestamp.Time, InFlight: owners[f.Name], Attempted: attempted(f)}}
	for i := range peers.Items {
		p := &peers.Items[i]
		if p.UID == f.UID || p.DeletionTimestamp != nil || p.Status.Phase.Final() || p.Status.MergedInto != "" ||
			!sameVictim(f, p, s.vmi) || !p.Spec.Severity.AtLeast(s.response.MinSeverity) {
			continue
		}
		cands = append(cands, mergeCandidate{Name: p.Name, Created: p.CreationTimestamp.Time, InFlight: owners[p.Name], Attempted: attempted(p)})
	}
	primary := choosePrimary(cands)
	if primary == f.Name {
		return ctrl.Result{}, nil
	}
	f.Status.MergedInto = primary
	msg := fmt.Sprintf("merged into finding %s about the same VMI %s: its migration answers this finding too", primary, s.victimKey())
	setMigrating(f, false, v1alpha1.ReasonMergedIntoFinding, msg)
	setMitigated(f, false, v1alpha1.ReasonMergedIntoFinding, msg)
	s.done = true
	return ctrl.Result{}, nil
}

// inFlightOwners names the findings that own an unfinished migration of the
// victim, from the cache and from reservations the cache may not show yet.
func (r *ThreatFindingReconciler) inFlightOwners(ctx context.Context, s *findingScope) (map[string]bool, error) {
	ms, err := r.victimMigrations(ctx, s)
	if err != nil {
		return nil, err
	}
	owners := map[string]bool{}
	for _, m := range ms {
		if !m.IsFinal() {
			if n := controllingFindingName(m); n != "" {
				owners[n] = true
			}
		}
	}
	if _, finding := r.gate.ReservedFor(s.victimKey(), "", s.now); finding != "" {
		owners[finding] = true
	}
	return owners, nil
}

// victimMigrations lists every migration of the victim VMI, whoever made it.
func (r *ThreatFindingReconciler) victimMigrations(ctx context.Context, s *findingScope) ([]*virtv1.VirtualMachineInstanceMigration, error) {
	var list virtv1.VirtualMachineInstanceMigrationList
	if err := r.List(ctx, &list, client.InNamespace(s.finding.Namespace), client.MatchingFields{indexMigrationVMI: s.finding.Spec.Victim.Name}); err != nil {
		return nil, fmt.Errorf("list migrations of %s: %w", s.victimKey(), err)
	}
	out := make([]*virtv1.VirtualMachineInstanceMigration, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, &list.Items[i])
	}
	return out, nil
}

// sameVictim reports whether finding p is about the same VMI instance as f
// (uids are compared when both name one).
func sameVictim(f, p *v1alpha1.ThreatFinding, vmi *virtv1.VirtualMachineInstance) bool {
	if p.Spec.Victim.Name != f.Spec.Victim.Name {
		return false
	}
	if p.Spec.Victim.UID != "" && vmi != nil && p.Spec.Victim.UID != vmi.UID {
		return false
	}
	return true
}

// attempted reports whether a migration was ever attempted for f.
func attempted(f *v1alpha1.ThreatFinding) bool {
	return f.Status.Migration != nil && f.Status.Migration.Attempts > 0
}

// summarise derives the fields that only summarise the conditions.
func (r *ThreatFindingReconciler) summarise(s *findingScope, ok bool) {
	st := &s.finding.Status
	st.Phase = derivePhase(*st)
	switch {
	case !st.Phase.Final():
		st.ResolvedTime = nil
	case st.ResolvedTime == nil:
		t := metav1.NewTime(s.now)
		st.ResolvedTime = &t
	}
	st.Message = summary(*st)
	if ok {
		st.ObservedGeneration = s.finding.Generation
	}
}

// lowestRequeue keeps the earliest non-zero requeue.
func lowestRequeue(a, b ctrl.Result) ctrl.Result {
	switch {
	case a.RequeueAfter == 0:
		return b
	case b.RequeueAfter == 0 || a.RequeueAfter <= b.RequeueAfter:
		return a
	}
	return b
}

// firstSeen remembers when the operator first saw each finding, to refine
// the creation time the API keeps in whole seconds.
type firstSeen struct {
	mu sync.Mutex
	at map[types.UID]time.Time
}

func (fs *firstSeen) mark(uid types.UID, t time.Time) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, ok := fs.at[uid]; !ok {
		fs.at[uid] = t
	}
}

func (fs *firstSeen) get(uid types.UID) (time.Time, bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	t, ok := fs.at[uid]
	return t, ok
}

func (fs *firstSeen) forget(uid types.UID) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	delete(fs.at, uid)
}

// expectationTTL bounds how long a pass waits for the cache to show the
// operator's own status write (a lost watch event must not stall a finding).
const expectationTTL = 5 * time.Second

// writeExpectations remembers, per finding, the resourceVersions that the
// operator's last status write made stale (KubeVirt's "expectations"):
// while the cache still shows one of them it is known to be behind, and a
// pass would only recompute what was written and fail with a conflict. The
// watch may deliver the new version before the write's own response
// returns, so the stale versions are recorded, not the new one.
type writeExpectations struct {
	mu sync.Mutex
	m  map[types.UID]staleVersions
}

type staleVersions struct {
	versions []string
	at       time.Time
}

func (w *writeExpectations) expect(uid types.UID, now time.Time, stale ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.m[uid] = staleVersions{stale, now}
}

// pending reports whether the cached version cachedRV predates the last
// write; any other version means the cache has caught up.
func (w *writeExpectations) pending(uid types.UID, cachedRV string, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.m[uid]
	if !ok {
		return false
	}
	if now.Sub(e.at) <= expectationTTL && slices.Contains(e.versions, cachedRV) {
		return true
	}
	delete(w.m, uid)
	return false
}

func (w *writeExpectations) forget(uid types.UID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.m, uid)
}

// createdAt estimates when the finding was created. The API records whole
// seconds; the true moment lies within the second after creationTimestamp
// and just before the operator's watch delivered the finding. When the
// operator saw it within that second, that sighting is the better estimate.
func (r *ThreatFindingReconciler) createdAt(f *v1alpha1.ThreatFinding) time.Time {
	created := f.CreationTimestamp.Time
	if seen, ok := r.seen.get(f.UID); ok && !seen.Before(created) && seen.Sub(created) < time.Second {
		return seen
	}
	return created
}

// init fills the defaults and the in-memory state.
func (r *ThreatFindingReconciler) init() {
	r.Options = r.Options.withDefaults()
	if r.gate == nil {
		r.gate = newMigrationGate()
	}
	if r.seen == nil {
		r.seen = &firstSeen{at: map[types.UID]time.Time{}}
	}
	if r.writes == nil {
		r.writes = &writeExpectations{m: map[types.UID]staleVersions{}}
	}
}

// SetupWithManager wires the reconciler's watches.
func (r *ThreatFindingReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.init()
	// A finding is reconciled when it appears, when its spec changes (the
	// agent merged detections) and when it goes; not after the status
	// writes of the operator itself, which would only double the work. What
	// a pass waits for comes back through the watches below or RequeueAfter.
	findingChanged := predicate.Funcs{
		CreateFunc: func(e event.CreateEvent) bool {
			r.seen.mark(e.Object.GetUID(), r.Options.Clock.Now())
			return true
		},
		UpdateFunc: func(e event.UpdateEvent) bool {
			return e.ObjectOld.GetGeneration() != e.ObjectNew.GetGeneration() ||
				(e.ObjectOld.GetDeletionTimestamp() == nil) != (e.ObjectNew.GetDeletionTimestamp() == nil) ||
				// The agent stored or refreshed the evidence snapshot.
				e.ObjectOld.GetAnnotations()[evidence.AnnotationRef] != e.ObjectNew.GetAnnotations()[evidence.AnnotationRef]
		},
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("threatfinding").
		For(&v1alpha1.ThreatFinding{}, builder.WithPredicates(findingChanged)).
		Watches(&virtv1.VirtualMachineInstanceMigration{}, handler.EnqueueRequestsFromMapFunc(r.migrationToFindings)).
		Watches(&virtv1.VirtualMachineInstance{}, handler.EnqueueRequestsFromMapFunc(r.vmiToFindings)).
		Watches(&v1alpha1.SideChannelPolicy{}, handler.EnqueueRequestsFromMapFunc(r.policyToFindings),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Options.FindingWorkers}).
		Complete(r)
}
