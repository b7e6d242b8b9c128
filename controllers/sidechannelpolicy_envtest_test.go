package controllers

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// heartbeat writes node's heartbeat Lease the way the node agent does
// (api/v1alpha1/heartbeat.go), renewed renewAgo ago.
func (w *world) heartbeat(short string, renewAgo time.Duration, seconds int32, caps v1alpha1.NodeCapabilities) {
	w.t.Helper()
	node := w.node(short)
	caps.Node = node
	raw, err := json.Marshal(caps)
	if err != nil {
		w.t.Fatal(err)
	}
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: operatorNS, Name: v1alpha1.HeartbeatLeaseName(node)}}
	err = admin.Get(w.ctx, client.ObjectKeyFromObject(l), l)
	exists := err == nil
	if err := ignoreNotFound(err); err != nil {
		w.t.Fatal(err)
	}
	l.Labels = map[string]string{v1alpha1.LabelHeartbeat: "true", v1alpha1.LabelNode: node}
	l.Annotations = map[string]string{v1alpha1.AnnotationCapabilities: string(raw)}
	l.Spec = coordinationv1.LeaseSpec{
		HolderIdentity:       ptr.To(node),
		LeaseDurationSeconds: ptr.To(seconds),
		RenewTime:            &metav1.MicroTime{Time: time.Now().Add(-renewAgo)},
	}
	if exists {
		err = admin.Update(w.ctx, l)
	} else {
		err = admin.Create(w.ctx, l)
	}
	if err != nil {
		w.t.Fatal(err)
	}
}

// waitPolicy waits until the policy's status satisfies check.
func (w *world) waitPolicy(name string, check func(*v1alpha1.SideChannelPolicy) error) *v1alpha1.SideChannelPolicy {
	w.t.Helper()
	p := &v1alpha1.SideChannelPolicy{}
	eventually(w.t, 10*time.Second, "policy "+name+" status", func() error {
		if err := admin.Get(w.ctx, client.ObjectKey{Name: name}, p); err != nil {
			return err
		}
		return check(p)
	})
	return p
}

func unmonitored(p *v1alpha1.SideChannelPolicy) map[string]string {
	out := map[string]string{}
	for _, u := range p.Status.UnmonitoredNodes {
		out[u.Node] = u.Reason
	}
	return out
}

func TestPolicyStatusFromHeartbeats(t *testing.T) {
	w := newWorld(t, "a", "b", "c", "d", "e")
	op := startOperator(t, testOptions())
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		w.vmi("vm-"+n, n, nil)
	}
	able := v1alpha1.NodeCapabilities{Monitorable: true, AgentVersion: "test"}
	w.heartbeat("a", time.Second, 40, able)
	w.heartbeat("b", 2*time.Minute, 40, able)
	// c has no agent at all.
	w.heartbeat("d", time.Second, 40, v1alpha1.NodeCapabilities{Reason: v1alpha1.ReasonPMUOwnedByGuest,
		Message: "node d: KVM passes the PMU to guests; the host cannot count guest events"})
	// e's heartbeat expires in about 3s and is not renewed.
	w.heartbeat("e", 0, 3, able)

	p := w.policy("protect", nil)
	want := map[string]string{w.node("b"): v1alpha1.ReasonHeartbeatStale, w.node("c"): v1alpha1.ReasonNoAgent, w.node("d"): v1alpha1.ReasonPMUOwnedByGuest}
	p = w.waitPolicy(p.Name, func(p *v1alpha1.SideChannelPolicy) error {
		if got := unmonitored(p); p.Status.MonitoredNodes != 2 || fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("monitored %d, unmonitored %v", p.Status.MonitoredNodes, got)
		}
		return nil
	})
	if p.Status.SelectedVMIs != 5 || p.Status.GovernedVMIs != 5 || p.Status.ObservedGeneration != p.Generation {
		t.Errorf("selected %d governed %d observed %d, want 5 5 %d", p.Status.SelectedVMIs, p.Status.GovernedVMIs, p.Status.ObservedGeneration, p.Generation)
	}
	ready := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.PolicyReady)
	if ready == nil || ready.Status != metav1.ConditionFalse || ready.Reason != v1alpha1.ReasonSomeNodesUnmonitored {
		t.Errorf("Ready = %+v, want False SomeNodesUnmonitored", ready)
	}
	// The same verdicts are served as a metric for alerting (read from the
	// operator's cache, which may be a moment behind what we just read).
	eventually(t, 5*time.Second, "sidewatch_node_unmonitored", func() error {
		for node, reason := range want {
			if got := op.metric(t, "sidewatch_node_unmonitored", map[string]string{"node": node, "reason": reason}); got != 1 {
				return fmt.Errorf("sidewatch_node_unmonitored{node=%q,reason=%q} = %v, want 1", node, reason, got)
			}
		}
		if got := op.metric(t, "sidewatch_node_unmonitored", map[string]string{"node": w.node("a")}); got != 0 {
			return fmt.Errorf("monitored node a has sidewatch_node_unmonitored %v", got)
		}
		return nil
	})
	for _, u := range p.Status.UnmonitoredNodes {
		if u.Node == w.node("d") && u.Message != "node d: KVM passes the PMU to guests; the host cannot count guest events" {
			t.Errorf("node d message = %q, want the agent's own", u.Message)
		}
	}

	// e goes stale with no event at all: the policy notices by itself.
	w.waitPolicy(p.Name, func(p *v1alpha1.SideChannelPolicy) error {
		if got := unmonitored(p)[w.node("e")]; got != v1alpha1.ReasonHeartbeatStale {
			return fmt.Errorf("e is %q", got)
		}
		return nil
	})

	// Agents come back everywhere: Ready.
	for _, n := range []string{"b", "c", "d", "e"} {
		w.heartbeat(n, 0, 40, able)
	}
	p = w.waitPolicy(p.Name, func(p *v1alpha1.SideChannelPolicy) error {
		if p.Status.MonitoredNodes != 5 || len(p.Status.UnmonitoredNodes) != 0 {
			return fmt.Errorf("monitored %d, unmonitored %v", p.Status.MonitoredNodes, unmonitored(p))
		}
		return nil
	})
	if c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.PolicyReady); c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonAllNodesMonitored {
		t.Errorf("Ready = %+v, want True AllNodesMonitored", c)
	}
}

func TestPolicyReadyEdgeCases(t *testing.T) {
	w := newWorld(t, "a")
	startOperator(t, testOptions())
	w.vmi("vm", "a", map[string]string{"app": "db"})

	empty := w.policy("selects-nothing", func(s *v1alpha1.SideChannelPolicySpec) {
		s.VMISelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "nothing-has-this"}}
	})
	w.waitPolicy(empty.Name, func(p *v1alpha1.SideChannelPolicy) error {
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.PolicyReady)
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonNoVMIsSelected || p.Status.SelectedVMIs != 0 {
			return fmt.Errorf("Ready %+v selected %d", c, p.Status.SelectedVMIs)
		}
		return nil
	})

	broken := w.policy("broken", func(s *v1alpha1.SideChannelPolicySpec) {
		s.VMISelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Resembles", Values: []string{"db"}}}}
	})
	w.waitPolicy(broken.Name, func(p *v1alpha1.SideChannelPolicy) error {
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.PolicyReady)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonInvalidSelector {
			return fmt.Errorf("Ready %+v", c)
		}
		return nil
	})

	// A label change on the VMI moves it into a policy's selection.
	v := w.key("vm")
	if err := admin.Patch(w.ctx, w.vmiObject(v.Name), client.RawPatch("application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"app":"nothing-has-this"}}}`))); err != nil {
		t.Fatal(err)
	}
	w.waitPolicy(empty.Name, func(p *v1alpha1.SideChannelPolicy) error {
		if p.Status.SelectedVMIs != 1 {
			return fmt.Errorf("selected %d", p.Status.SelectedVMIs)
		}
		return nil
	})
}
