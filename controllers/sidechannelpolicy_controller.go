package controllers

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// maxUnmonitoredNodes is the schema's bound on status.unmonitoredNodes.
const maxUnmonitoredNodes = 1000

// staleSlack wakes the reconciler just after a heartbeat turns stale, so it
// sees it stale rather than fresh by a hair.
const staleSlack = 100 * time.Millisecond

// SideChannelPolicyReconciler keeps each policy's status current: how many
// VMIs it selects and governs, which nodes hosting them are monitored (from
// the agents' heartbeat Leases) and a Ready condition.
type SideChannelPolicyReconciler struct {
	client.Client
	Clock clock.PassiveClock
	// Namespace holds the agents' heartbeat Leases.
	Namespace string
}

// +kubebuilder:rbac:groups=sidewatch.io,resources=sidechannelpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=sidewatch.io,resources=sidechannelpolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=kubevirt.io,resources=virtualmachineinstances,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch,namespace=sidewatch-system

// Reconcile rebuilds one policy's status from the cluster.
func (r *SideChannelPolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	log := logf.FromContext(ctx)
	p := &v1alpha1.SideChannelPolicy{}
	if err := r.Get(ctx, req.NamespacedName, p); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if p.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	before := p.DeepCopy()
	defer func() {
		if retErr == nil {
			p.Status.ObservedGeneration = p.Generation
		}
		if equality.Semantic.DeepEqual(before.Status, p.Status) {
			return
		}
		if err := r.Status().Patch(ctx, p, client.MergeFrom(before)); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("patch status of policy %s: %w", p.Name, err))
			return
		}
		log.V(1).Info("policy status updated", "selected", p.Status.SelectedVMIs, "governed", p.Status.GovernedVMIs,
			"monitoredNodes", p.Status.MonitoredNodes, "unmonitoredNodes", len(p.Status.UnmonitoredNodes))
	}()

	self := compilePolicy(p)
	if self.err != nil {
		p.Status.SelectedVMIs, p.Status.GovernedVMIs, p.Status.MonitoredNodes = 0, 0, 0
		p.Status.UnmonitoredNodes = nil
		meta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{
			Type: v1alpha1.PolicyReady, Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonInvalidSelector,
			ObservedGeneration: p.Generation,
			Message:            fmt.Sprintf("%v; the policy selects nothing until the selector is fixed", self.err),
		})
		return ctrl.Result{}, nil
	}

	var policies v1alpha1.SideChannelPolicyList
	if err := r.List(ctx, &policies); err != nil {
		return ctrl.Result{}, fmt.Errorf("list policies: %w", err)
	}
	nsLabels, err := namespaceLabels(ctx, r.Client)
	if err != nil {
		return ctrl.Result{}, err
	}
	var vmis virtv1.VirtualMachineInstanceList
	if err := r.List(ctx, &vmis); err != nil {
		return ctrl.Result{}, fmt.Errorf("list VMIs: %w", err)
	}
	var leases coordinationv1.LeaseList
	if err := r.List(ctx, &leases, client.InNamespace(r.Namespace)); err != nil {
		return ctrl.Result{}, fmt.Errorf("list heartbeat leases in %s: %w", r.Namespace, err)
	}

	counts := countSelected(self, compilePolicies(policies.Items), nsLabels, vmis.Items)
	watch := watchNodes(counts.Nodes, leases.Items, r.Clock.Now())
	p.Status.SelectedVMIs = counts.Selected
	p.Status.GovernedVMIs = counts.Governed
	p.Status.MonitoredNodes = watch.Monitored
	p.Status.UnmonitoredNodes = watch.Unmonitored
	meta.SetStatusCondition(&p.Status.Conditions, readyCondition(p.Generation, counts, watch))
	if !watch.NextStale.IsZero() {
		res.RequeueAfter = watch.NextStale.Sub(r.Clock.Now()) + staleSlack
	}
	return res, nil
}

// selection is what a policy selects.
type selection struct {
	Selected, Governed int32
	// Nodes host selected VMIs, sorted.
	Nodes []string
}

// countSelected counts the running VMIs self selects, those it governs
// under the overlap rule, and the nodes they run on.
func countSelected(self selectorPolicy, all []selectorPolicy, nsLabels map[string]map[string]string, vmis []virtv1.VirtualMachineInstance) selection {
	var out selection
	nodes := map[string]bool{}
	for i := range vmis {
		v := &vmis[i]
		if v.DeletionTimestamp != nil || v.IsFinal() {
			continue
		}
		ns := nsLabels[v.Namespace]
		if !self.selects(ns, v.Labels) {
			continue
		}
		out.Selected++
		if g := governing(all, ns, v.Labels); g != nil && g.Name == self.policy.Name {
			out.Governed++
		}
		if v.Status.NodeName != "" {
			nodes[v.Status.NodeName] = true
		}
	}
	for n := range nodes {
		out.Nodes = append(out.Nodes, n)
	}
	sort.Strings(out.Nodes)
	return out
}

// nodeReport is the monitoring state of the nodes a policy cares about.
type nodeReport struct {
	Monitored   int32
	Unmonitored []v1alpha1.UnmonitoredNode
	// NextStale is when the first fresh heartbeat among them turns stale.
	NextStale time.Time
}

// watchNodes reads each node's heartbeat Lease (by its contract name).
func watchNodes(nodes []string, leases []coordinationv1.Lease, now time.Time) nodeReport {
	byName := make(map[string]*coordinationv1.Lease, len(leases))
	for i := range leases {
		byName[leases[i].Name] = &leases[i]
	}
	var r nodeReport
	for _, n := range nodes {
		w := readHeartbeat(n, byName[v1alpha1.HeartbeatLeaseName(n)], now)
		if w.Monitored {
			r.Monitored++
		} else if len(r.Unmonitored) < maxUnmonitoredNodes {
			r.Unmonitored = append(r.Unmonitored, v1alpha1.UnmonitoredNode{Node: n, Reason: w.Reason, Message: w.Message})
		}
		if !w.StaleAt.IsZero() && (r.NextStale.IsZero() || w.StaleAt.Before(r.NextStale)) {
			r.NextStale = w.StaleAt
		}
	}
	return r
}

// readyCondition summarises a policy for a person.
func readyCondition(gen int64, sel selection, nodes nodeReport) metav1.Condition {
	c := metav1.Condition{Type: v1alpha1.PolicyReady, ObservedGeneration: gen}
	switch {
	case sel.Selected == 0:
		c.Status, c.Reason = metav1.ConditionTrue, v1alpha1.ReasonNoVMIsSelected
		c.Message = "the policy selects no running VMI; check spec.namespaceSelector and spec.vmiSelector if it should"
	case len(nodes.Unmonitored) == 0:
		c.Status, c.Reason = metav1.ConditionTrue, v1alpha1.ReasonAllNodesMonitored
		c.Message = fmt.Sprintf("all %d nodes hosting the %d selected VMIs are monitored", len(sel.Nodes), sel.Selected)
	default:
		c.Status, c.Reason = metav1.ConditionFalse, v1alpha1.ReasonSomeNodesUnmonitored
		var parts []string
		for i, u := range nodes.Unmonitored {
			if i == 5 {
				parts = append(parts, fmt.Sprintf("and %d more", len(nodes.Unmonitored)-5))
				break
			}
			parts = append(parts, fmt.Sprintf("%s (%s)", u.Node, u.Reason))
		}
		c.Message = fmt.Sprintf("%d of %d nodes hosting selected VMIs are not monitored: %s; see status.unmonitoredNodes",
			len(nodes.Unmonitored), len(sel.Nodes), strings.Join(parts, ", "))
	}
	return c
}

// namespaceLabels maps every namespace to its labels.
func namespaceLabels(ctx context.Context, c client.Reader) (map[string]map[string]string, error) {
	var list corev1.NamespaceList
	if err := c.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	out := make(map[string]map[string]string, len(list.Items))
	for i := range list.Items {
		out[list.Items[i].Name] = list.Items[i].Labels
	}
	return out, nil
}

// SetupWithManager watches policies and everything their status depends on.
func (r *SideChannelPolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	allPolicies := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []ctrl.Request {
		var list v1alpha1.SideChannelPolicyList
		if err := mgr.GetClient().List(ctx, &list); err != nil {
			logf.FromContext(ctx).Error(err, "list policies")
			return nil
		}
		reqs := make([]ctrl.Request, 0, len(list.Items))
		for i := range list.Items {
			reqs = append(reqs, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
		return reqs
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("sidechannelpolicy").
		For(&v1alpha1.SideChannelPolicy{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&virtv1.VirtualMachineInstance{}, allPolicies, builder.WithPredicates(vmiPlacementChanged())).
		Watches(&corev1.Namespace{}, allPolicies, builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Watches(&coordinationv1.Lease{}, allPolicies, builder.WithPredicates(r.heartbeatChanged())).
		Complete(r)
}

// vmiPlacementChanged passes VMI events that can change a policy's counts:
// creation, deletion, labels, node or phase.
func vmiPlacementChanged() predicate.Funcs {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*virtv1.VirtualMachineInstance)
			n, ok2 := e.ObjectNew.(*virtv1.VirtualMachineInstance)
			if !ok1 || !ok2 {
				return true
			}
			return o.Status.NodeName != n.Status.NodeName || o.Status.Phase != n.Status.Phase ||
				!equality.Semantic.DeepEqual(o.Labels, n.Labels) || (o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil)
		},
	}
}

// heartbeatChanged passes heartbeat Lease events in the operator's
// namespace, except a renewal of a heartbeat that was still fresh: that
// changes nothing, and staleness is caught by RequeueAfter instead.
func (r *SideChannelPolicyReconciler) heartbeatChanged() predicate.Funcs {
	ours := func(o client.Object) bool {
		return o.GetNamespace() == r.Namespace && strings.HasPrefix(o.GetName(), v1alpha1.HeartbeatLeasePrefix)
	}
	return predicate.Funcs{
		CreateFunc:  func(e event.CreateEvent) bool { return ours(e.Object) },
		DeleteFunc:  func(e event.DeleteEvent) bool { return ours(e.Object) },
		GenericFunc: func(e event.GenericEvent) bool { return ours(e.Object) },
		UpdateFunc: func(e event.UpdateEvent) bool {
			if !ours(e.ObjectNew) {
				return false
			}
			o, ok1 := e.ObjectOld.(*coordinationv1.Lease)
			n, ok2 := e.ObjectNew.(*coordinationv1.Lease)
			if !ok1 || !ok2 {
				return true
			}
			node := strings.TrimPrefix(n.Name, v1alpha1.HeartbeatLeasePrefix)
			wasFresh := readHeartbeat(node, o, r.Clock.Now()).StaleAt.After(r.Clock.Now())
			same := o.Annotations[v1alpha1.AnnotationCapabilities] == n.Annotations[v1alpha1.AnnotationCapabilities] &&
				equality.Semantic.DeepEqual(o.Spec.LeaseDurationSeconds, n.Spec.LeaseDurationSeconds)
			return !(wasFresh && same)
		},
	}
}
