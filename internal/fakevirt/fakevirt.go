// Package fakevirt stands in for KubeVirt's virt-controller and virt-handler
// where there is no KubeVirt: in the operator's tests and in the demo. It
// moves VirtualMachineInstanceMigration objects through the phases real
// KubeVirt uses (Pending, Scheduling, Scheduled, PreparingTarget,
// TargetReady, Running, Succeeded or Failed), one phase per pass, and keeps
// the VMI's status.migrationState, status.nodeName and kubevirt.io/nodeName
// label in step, the way virt-controller and virt-handler do together.
//
// What it honours, as KubeVirt does:
//   - spec.addedNodeSelector and the VMI's spec.nodeSelector against Node
//     labels (keys set on the VMI win over added ones), Ready and
//     schedulable nodes only, never the source node;
//   - a target that cannot be scheduled stays in Scheduling and fails after
//     Options.UnschedulableTimeout;
//   - a VMI whose LiveMigratable condition is not True, a VMI that is not
//     Running, or one that another unfinished migration already moves,
//     fails the new migration at once (real KubeVirt's admission webhook
//     refuses such a migration; without webhooks this is the closest
//     observable behaviour);
//   - a migration whose VMI is gone is deleted; a migration deleted while in
//     flight is aborted (its finalizer is removed after the abort);
//   - finalized migrations beyond Options.KeepFinalized per VMI are garbage
//     collected, oldest first.
//
// Tests steer it with FailNext (the next migrations of a VMI fail while
// Running) and Hold/Release (a migration stops advancing at a phase).
package fakevirt

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// Defaults of Options.
const (
	DefaultStepDelay = 100 * time.Millisecond
	// DefaultUnschedulableTimeout is KubeVirt's own
	// (defaultUnschedulablePendingTimeoutSeconds).
	DefaultUnschedulableTimeout = 5 * time.Minute
	// DefaultKeepFinalized is KubeVirt's
	// defaultFinalizedMigrationGarbageCollectionBuffer.
	DefaultKeepFinalized = 5
)

// Options tune the stand-in.
type Options struct {
	// StepDelay is the time between two phases of one migration.
	StepDelay time.Duration
	// UnschedulableTimeout fails a migration whose target node cannot be
	// found for this long.
	UnschedulableTimeout time.Duration
	// KeepFinalized is how many finished migrations per VMI survive garbage
	// collection; 0 means DefaultKeepFinalized, negative keeps them all.
	KeepFinalized int
	// Clock stamps phase transitions; nil is the real clock.
	Clock clock.PassiveClock
	// Name names the controller (default "fakevirt-migration"), so that
	// several stand-ins can run in one process.
	Name string
}

func (o *Options) setDefaults() {
	if o.StepDelay <= 0 {
		o.StepDelay = DefaultStepDelay
	}
	if o.UnschedulableTimeout <= 0 {
		o.UnschedulableTimeout = DefaultUnschedulableTimeout
	}
	if o.KeepFinalized == 0 {
		o.KeepFinalized = DefaultKeepFinalized
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Name == "" {
		o.Name = "fakevirt-migration"
	}
}

// Controller is the stand-in. Create it with New and add it to a manager
// with SetupWithManager; it needs get/list/watch/update/patch/delete on
// VMIs, VMIMs (and their status) and get/list/watch on Nodes.
type Controller struct {
	client client.Client
	// reader reads the migration and its VMI at the start of each pass
	// straight from the API server: a pass acts on what the previous one
	// wrote, which a cache may not show yet.
	reader client.Reader
	opts   Options

	mu       sync.Mutex
	failures map[types.NamespacedName]failure
	holds    map[types.NamespacedName]virtv1.VirtualMachineInstanceMigrationPhase
	// notBefore paces each migration: the watch event of a phase change
	// must not advance it again before StepDelay has passed.
	notBefore map[types.UID]time.Time
}

type failure struct {
	remaining int
	reason    string
}

// New returns a stand-in that reads and writes through c.
func New(c client.Client, opts Options) *Controller {
	opts.setDefaults()
	return &Controller{
		client:    c,
		reader:    c,
		opts:      opts,
		failures:  map[types.NamespacedName]failure{},
		holds:     map[types.NamespacedName]virtv1.VirtualMachineInstanceMigrationPhase{},
		notBefore: map[types.UID]time.Time{},
	}
}

// FailNext makes the next n migrations of the VMI fail while Running, with
// reason as the migration state's failureReason. n <= 0 clears it.
func (c *Controller) FailNext(vmi types.NamespacedName, n int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n <= 0 {
		delete(c.failures, vmi)
		return
	}
	if reason == "" {
		reason = "fakevirt: injected migration failure"
	}
	c.failures[vmi] = failure{remaining: n, reason: reason}
}

// Hold stops migrations of the VMI from leaving phase until Release.
func (c *Controller) Hold(vmi types.NamespacedName, phase virtv1.VirtualMachineInstanceMigrationPhase) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.holds[vmi] = phase
}

// Release lets held migrations of the VMI advance again.
func (c *Controller) Release(vmi types.NamespacedName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.holds, vmi)
}

func (c *Controller) held(vmi types.NamespacedName, phase virtv1.VirtualMachineInstanceMigrationPhase) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.holds[vmi]
	return ok && p == phase
}

// takeFailure consumes one injected failure of the VMI, if any.
func (c *Controller) takeFailure(vmi types.NamespacedName) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.failures[vmi]
	if !ok {
		return "", false
	}
	f.remaining--
	if f.remaining <= 0 {
		delete(c.failures, vmi)
	} else {
		c.failures[vmi] = f
	}
	return f.reason, true
}

// SetupWithManager registers the migration controller with mgr.
func (c *Controller) SetupWithManager(mgr ctrl.Manager) error {
	c.reader = mgr.GetAPIReader()
	return ctrl.NewControllerManagedBy(mgr).
		Named(c.opts.Name).
		For(&virtv1.VirtualMachineInstanceMigration{}).
		// A VMI going away fails or deletes its migrations.
		Watches(&virtv1.VirtualMachineInstance{}, handler.EnqueueRequestsFromMapFunc(c.vmiToMigrations)).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Complete(c)
}

func (c *Controller) vmiToMigrations(ctx context.Context, obj client.Object) []ctrl.Request {
	var list virtv1.VirtualMachineInstanceMigrationList
	if err := c.client.List(ctx, &list, client.InNamespace(obj.GetNamespace())); err != nil {
		return nil
	}
	var reqs []ctrl.Request
	for i := range list.Items {
		m := &list.Items[i]
		if m.Spec.VMIName == obj.GetName() && !m.IsFinal() {
			reqs = append(reqs, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(m)})
		}
	}
	return reqs
}

// Reconcile advances one migration by at most one phase.
func (c *Controller) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := logf.FromContext(ctx)
	m := &virtv1.VirtualMachineInstanceMigration{}
	if err := c.reader.Get(ctx, req.NamespacedName, m); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	vmiKey := types.NamespacedName{Namespace: m.Namespace, Name: m.Spec.VMIName}
	vmi := &virtv1.VirtualMachineInstance{}
	if err := c.reader.Get(ctx, vmiKey, vmi); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		vmi = nil
	}

	if m.IsFinal() {
		if err := c.removeFinalizer(ctx, m); err != nil {
			return ctrl.Result{}, err
		}
		if vmi != nil {
			return ctrl.Result{}, c.garbageCollect(ctx, vmi)
		}
		return ctrl.Result{}, nil
	}

	// As virt-controller does: a migration of a VMI that no longer exists
	// is deleted.
	if vmi == nil {
		if m.DeletionTimestamp == nil {
			log.V(1).Info("deleting migration of a missing VMI", "vmi", vmiKey)
			return ctrl.Result{}, client.IgnoreNotFound(c.client.Delete(ctx, m))
		}
		return ctrl.Result{}, c.finish(ctx, m, nil, virtv1.MigrationFailed, "vmi does not exist")
	}
	if m.DeletionTimestamp != nil {
		return ctrl.Result{}, c.finish(ctx, m, vmi, virtv1.MigrationFailed, "migration was deleted before it finished (aborted)")
	}
	if !controllerutil.ContainsFinalizer(m, virtv1.VirtualMachineInstanceMigrationFinalizer) {
		before := m.DeepCopy()
		controllerutil.AddFinalizer(m, virtv1.VirtualMachineInstanceMigrationFinalizer)
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		m.Labels[virtv1.MigrationSelectorLabel] = m.Spec.VMIName
		if err := c.client.Patch(ctx, m, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	if c.held(vmiKey, m.Status.Phase) {
		return ctrl.Result{RequeueAfter: c.opts.StepDelay}, nil
	}
	if wait := c.pace(m.UID); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}

	next, err := c.step(ctx, m, vmi)
	if err != nil {
		if apierrors.IsConflict(err) {
			return ctrl.Result{RequeueAfter: c.opts.StepDelay}, nil
		}
		return ctrl.Result{}, err
	}
	c.paced(m.UID, next)
	return ctrl.Result{RequeueAfter: next}, nil
}

// pace is how long a migration must still wait before its next step.
func (c *Controller) pace(uid types.UID) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.notBefore[uid].Sub(c.opts.Clock.Now())
}

// paced records when a migration may take its next step, and forgets
// migrations that have none.
func (c *Controller) paced(uid types.UID, next time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if next <= 0 {
		delete(c.notBefore, uid)
		return
	}
	c.notBefore[uid] = c.opts.Clock.Now().Add(next)
}

// step performs the work of the migration's current phase and moves it to
// the next one; it returns when to look again.
func (c *Controller) step(ctx context.Context, m *virtv1.VirtualMachineInstanceMigration, vmi *virtv1.VirtualMachineInstance) (time.Duration, error) {
	now := c.opts.Clock.Now()
	switch m.Status.Phase {
	case virtv1.MigrationPhaseUnset:
		if reason := c.refusal(ctx, m, vmi); reason != "" {
			return 0, c.finish(ctx, m, nil, virtv1.MigrationFailed, reason)
		}
		return c.opts.StepDelay, c.setPhase(ctx, m, virtv1.MigrationPending)

	case virtv1.MigrationPending:
		// The target virt-launcher pod is created here.
		return c.opts.StepDelay, c.setPhase(ctx, m, virtv1.MigrationScheduling)

	case virtv1.MigrationScheduling:
		target, why, err := c.pickTarget(ctx, m, vmi)
		if err != nil {
			return 0, err
		}
		if target == "" {
			// API timestamps have whole seconds: count from the end of the
			// second the phase began, so the timeout is never cut short.
			since := phaseSince(m, virtv1.MigrationScheduling)
			if !since.IsZero() && now.Sub(since.Add(time.Second)) >= c.opts.UnschedulableTimeout {
				return 0, c.finish(ctx, m, nil, virtv1.MigrationFailed,
					fmt.Sprintf("target pod unschedulable for %s: %s", c.opts.UnschedulableTimeout, why))
			}
			return c.opts.StepDelay, nil
		}
		// Hand-off: virt-controller records the target on the VMI.
		src := vmi.Status.NodeName
		if err := c.patchVMI(ctx, vmi, func(v *virtv1.VirtualMachineInstance) {
			v.Status.MigrationState = &virtv1.VirtualMachineInstanceMigrationState{
				MigrationUID: m.UID,
				SourceNode:   src,
				SourcePod:    "virt-launcher-" + v.Name + "-src",
				TargetNode:   target,
				TargetPod:    "virt-launcher-" + v.Name + "-" + string(m.UID)[:5],
			}
		}); err != nil {
			return 0, err
		}
		return c.opts.StepDelay, c.setPhase(ctx, m, virtv1.MigrationScheduled)

	case virtv1.MigrationScheduled:
		if !ours(vmi, m) {
			return 0, c.finish(ctx, m, nil, virtv1.MigrationFailed, "VMI's migration state was taken over by another migration")
		}
		return c.opts.StepDelay, c.setPhase(ctx, m, virtv1.MigrationPreparingTarget)

	case virtv1.MigrationPreparingTarget:
		if !ours(vmi, m) {
			return 0, c.finish(ctx, m, nil, virtv1.MigrationFailed, "VMI's migration state was cleared during the migration")
		}
		// The target virt-handler publishes where to send the memory.
		if err := c.patchVMI(ctx, vmi, func(v *virtv1.VirtualMachineInstance) {
			v.Status.MigrationState.TargetNodeAddress = "192.0.2.1"
			v.Status.MigrationState.TargetDirectMigrationNodePorts = map[string]int{"49152": 0}
		}); err != nil {
			return 0, err
		}
		return c.opts.StepDelay, c.setPhase(ctx, m, virtv1.MigrationTargetReady)

	case virtv1.MigrationTargetReady:
		if !ours(vmi, m) {
			return 0, c.finish(ctx, m, nil, virtv1.MigrationFailed, "VMI's migration state was cleared during the migration")
		}
		start := metav1.NewTime(now)
		if err := c.patchVMI(ctx, vmi, func(v *virtv1.VirtualMachineInstance) {
			v.Status.MigrationState.StartTimestamp = &start
			v.Status.MigrationState.Mode = virtv1.MigrationPreCopy
		}); err != nil {
			return 0, err
		}
		return c.opts.StepDelay, c.setPhase(ctx, m, virtv1.MigrationRunning)

	case virtv1.MigrationRunning:
		if !ours(vmi, m) {
			return 0, c.finish(ctx, m, nil, virtv1.MigrationFailed, "VMI's migration state was cleared during the migration")
		}
		key := types.NamespacedName{Namespace: vmi.Namespace, Name: vmi.Name}
		if reason, fail := c.takeFailure(key); fail {
			return 0, c.finish(ctx, m, vmi, virtv1.MigrationFailed, reason)
		}
		return 0, c.finish(ctx, m, vmi, virtv1.MigrationSucceeded, "")
	}
	return 0, nil
}

// refusal says why KubeVirt would refuse to start this migration, or "".
func (c *Controller) refusal(ctx context.Context, m *virtv1.VirtualMachineInstanceMigration, vmi *virtv1.VirtualMachineInstance) string {
	if vmi.Status.Phase != virtv1.Running {
		return fmt.Sprintf("VMI %s is not running (phase %q)", vmi.Name, vmi.Status.Phase)
	}
	if !vmi.IsMigratable() {
		reason := "LiveMigratable condition is not True"
		for _, cond := range vmi.Status.Conditions {
			if cond.Type == virtv1.VirtualMachineInstanceIsMigratable {
				reason = fmt.Sprintf("not live-migratable: %s: %s", cond.Reason, cond.Message)
			}
		}
		return fmt.Sprintf("cannot migrate VMI %s: %s", vmi.Name, reason)
	}
	if ms := vmi.Status.MigrationState; ms != nil && ms.MigrationUID != "" && ms.MigrationUID != m.UID && !ms.Completed && !ms.Failed {
		var list virtv1.VirtualMachineInstanceMigrationList
		if err := c.client.List(ctx, &list, client.InNamespace(m.Namespace)); err == nil {
			for i := range list.Items {
				other := &list.Items[i]
				if other.UID == ms.MigrationUID && !other.IsFinal() {
					return fmt.Sprintf("VMI %s is not eligible for migration because migration %s is in progress", vmi.Name, other.Name)
				}
			}
		}
	}
	return ""
}

// pickTarget chooses the target node: among Ready, schedulable nodes other
// than the source that match the VMI's nodeSelector and the migration's
// addedNodeSelector, the one hosting the fewest VMIs, then by name. It
// returns "" and the reason when there is none.
func (c *Controller) pickTarget(ctx context.Context, m *virtv1.VirtualMachineInstanceMigration, vmi *virtv1.VirtualMachineInstance) (string, string, error) {
	selector := map[string]string{}
	for k, v := range m.Spec.AddedNodeSelector {
		selector[k] = v
	}
	// Keys the VMI sets win: addedNodeSelector may only restrict.
	for k, v := range vmi.Spec.NodeSelector {
		selector[k] = v
	}
	var nodes corev1.NodeList
	if err := c.client.List(ctx, &nodes); err != nil {
		return "", "", err
	}
	var vmis virtv1.VirtualMachineInstanceList
	if err := c.client.List(ctx, &vmis); err != nil {
		return "", "", err
	}
	load := map[string]int{}
	for i := range vmis.Items {
		load[vmis.Items[i].Status.NodeName]++
	}
	var candidates []string
	notMatching, notReady := 0, 0
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if n.Name == vmi.Status.NodeName {
			continue
		}
		if !Matches(n.Labels, selector) {
			notMatching++
			continue
		}
		if n.Spec.Unschedulable || !nodeReady(n) {
			notReady++
			continue
		}
		candidates = append(candidates, n.Name)
	}
	if len(candidates) == 0 {
		return "", fmt.Sprintf("0/%d nodes are available: 1 is the source, %d do not match the node selector %v, %d are not Ready or unschedulable",
			len(nodes.Items), notMatching, selector, notReady), nil
	}
	sort.Slice(candidates, func(i, j int) bool {
		if load[candidates[i]] != load[candidates[j]] {
			return load[candidates[i]] < load[candidates[j]]
		}
		return candidates[i] < candidates[j]
	})
	return candidates[0], "", nil
}

// Matches reports whether labels hold every key=value of selector, the
// equality semantics of nodeSelector and addedNodeSelector.
func Matches(nodeLabels, selector map[string]string) bool {
	return labels.SelectorFromSet(selector).Matches(labels.Set(nodeLabels))
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func ours(vmi *virtv1.VirtualMachineInstance, m *virtv1.VirtualMachineInstanceMigration) bool {
	return vmi.Status.MigrationState != nil && vmi.Status.MigrationState.MigrationUID == m.UID
}

// finish ends the migration in phase (Succeeded or Failed). With a vmi whose
// migration state is this migration's, it completes the VMI side too: on
// success the VMI now runs on the target node.
func (c *Controller) finish(ctx context.Context, m *virtv1.VirtualMachineInstanceMigration, vmi *virtv1.VirtualMachineInstance, phase virtv1.VirtualMachineInstanceMigrationPhase, reason string) error {
	end := metav1.NewTime(c.opts.Clock.Now())
	var state *virtv1.VirtualMachineInstanceMigrationState
	if vmi != nil && ours(vmi, m) {
		if err := c.patchVMI(ctx, vmi, func(v *virtv1.VirtualMachineInstance) {
			ms := v.Status.MigrationState
			ms.EndTimestamp = &end
			if phase == virtv1.MigrationSucceeded {
				ms.Completed = true
				ms.TargetNodeDomainDetected = true
				ms.TargetNodeDomainReadyTimestamp = &end
				v.Status.NodeName = ms.TargetNode
				if v.Labels == nil {
					v.Labels = map[string]string{}
				}
				v.Labels[virtv1.NodeNameLabel] = ms.TargetNode
			} else {
				ms.Failed = true
				ms.FailureReason = reason
				if m.DeletionTimestamp != nil {
					ms.AbortRequested = true
					ms.AbortStatus = virtv1.MigrationAbortSucceeded
				}
			}
			state = ms.DeepCopy()
		}); err != nil {
			return err
		}
	}
	if state == nil && reason != "" {
		state = &virtv1.VirtualMachineInstanceMigrationState{Failed: true, FailureReason: reason, EndTimestamp: &end}
	}
	before := m.DeepCopy()
	m.Status.MigrationState = state
	setPhaseOn(m, phase, end)
	if err := c.client.Status().Patch(ctx, m, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return client.IgnoreNotFound(err)
	}
	return c.removeFinalizer(ctx, m)
}

func (c *Controller) removeFinalizer(ctx context.Context, m *virtv1.VirtualMachineInstanceMigration) error {
	if !controllerutil.ContainsFinalizer(m, virtv1.VirtualMachineInstanceMigrationFinalizer) {
		return nil
	}
	before := m.DeepCopy()
	controllerutil.RemoveFinalizer(m, virtv1.VirtualMachineInstanceMigrationFinalizer)
	return client.IgnoreNotFound(c.client.Patch(ctx, m, client.MergeFrom(before)))
}

func (c *Controller) setPhase(ctx context.Context, m *virtv1.VirtualMachineInstanceMigration, phase virtv1.VirtualMachineInstanceMigrationPhase) error {
	before := m.DeepCopy()
	setPhaseOn(m, phase, metav1.NewTime(c.opts.Clock.Now()))
	return client.IgnoreNotFound(c.client.Status().Patch(ctx, m, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})))
}

func setPhaseOn(m *virtv1.VirtualMachineInstanceMigration, phase virtv1.VirtualMachineInstanceMigrationPhase, at metav1.Time) {
	m.Status.Phase = phase
	m.Status.PhaseTransitionTimestamps = append(m.Status.PhaseTransitionTimestamps,
		virtv1.VirtualMachineInstanceMigrationPhaseTransitionTimestamp{Phase: phase, PhaseTransitionTimestamp: at})
}

// phaseSince is when the migration entered phase, or zero.
func phaseSince(m *virtv1.VirtualMachineInstanceMigration, phase virtv1.VirtualMachineInstanceMigrationPhase) time.Time {
	for _, t := range slices.Backward(m.Status.PhaseTransitionTimestamps) {
		if t.Phase == phase {
			return t.PhaseTransitionTimestamp.Time
		}
	}
	return time.Time{}
}

// patchVMI applies mutate to a copy of vmi and patches the difference,
// failing on a concurrent change so that no update is lost. The VMI CRD has
// no status subresource (as in KubeVirt), so status travels in the main
// resource.
func (c *Controller) patchVMI(ctx context.Context, vmi *virtv1.VirtualMachineInstance, mutate func(*virtv1.VirtualMachineInstance)) error {
	before := vmi.DeepCopy()
	mutate(vmi)
	return c.client.Patch(ctx, vmi, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
}

// garbageCollect deletes the oldest finished migrations of the VMI beyond
// KeepFinalized, as virt-controller does.
func (c *Controller) garbageCollect(ctx context.Context, vmi *virtv1.VirtualMachineInstance) error {
	if c.opts.KeepFinalized < 0 {
		return nil
	}
	var list virtv1.VirtualMachineInstanceMigrationList
	if err := c.client.List(ctx, &list, client.InNamespace(vmi.Namespace)); err != nil {
		return err
	}
	var done []*virtv1.VirtualMachineInstanceMigration
	for i := range list.Items {
		m := &list.Items[i]
		if m.Spec.VMIName == vmi.Name && m.IsFinal() && m.DeletionTimestamp == nil {
			done = append(done, m)
		}
	}
	if len(done) <= c.opts.KeepFinalized {
		return nil
	}
	sort.Slice(done, func(i, j int) bool {
		ti, tj := done[i].CreationTimestamp, done[j].CreationTimestamp
		if !ti.Equal(&tj) {
			return ti.Before(&tj)
		}
		return done[i].Name < done[j].Name
	})
	for _, m := range done[:len(done)-c.opts.KeepFinalized] {
		if err := c.client.Delete(ctx, m); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return nil
}
