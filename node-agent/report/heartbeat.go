package report

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Heartbeat keeps this node's agent Lease fresh, following the contract of
// api/v1alpha1/heartbeat.go: Lease HeartbeatLeaseName(node) in the agent's
// namespace, labelled LabelHeartbeat and LabelNode, holderIdentity the
// node, renewed at least every duration/3, NodeCapabilities as JSON in
// AnnotationCapabilities.
type Heartbeat struct {
	c         client.Client
	log       logr.Logger
	clock     clock.PassiveClock
	namespace string
	node      string
	duration  time.Duration
}

// NewHeartbeat makes a heartbeat writer; duration 0 means
// DefaultHeartbeatSeconds.
func NewHeartbeat(c client.Client, log logr.Logger, clk clock.PassiveClock, namespace, node string, duration time.Duration) (*Heartbeat, error) {
	if namespace == "" {
		return nil, fmt.Errorf("report: heartbeat namespace is empty: set POD_NAMESPACE from the downward API or --namespace")
	}
	if node == "" {
		return nil, fmt.Errorf("report: heartbeat node is empty: set NODE_NAME from the downward API or --node-name")
	}
	if duration <= 0 {
		duration = v1alpha1.DefaultHeartbeatSeconds * time.Second
	}
	if duration < 3*time.Second {
		return nil, fmt.Errorf("report: heartbeat duration %v is below 3s", duration)
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Heartbeat{c: c, log: log, clock: clk, namespace: namespace, node: node, duration: duration}, nil
}

// Period is how often Run renews: a third of the lease duration.
func (h *Heartbeat) Period() time.Duration { return h.duration / 3 }

// Beat creates or renews the Lease with caps.
func (h *Heartbeat) Beat(ctx context.Context, caps v1alpha1.NodeCapabilities) error {
	caps.Node = h.node
	raw, err := json.Marshal(caps)
	if err != nil {
		return fmt.Errorf("report: encode capabilities: %w", err)
	}
	now := metav1.NewMicroTime(h.clock.Now())
	key := client.ObjectKey{Namespace: h.namespace, Name: v1alpha1.HeartbeatLeaseName(h.node)}
	var lease coordinationv1.Lease
	err = h.c.Get(ctx, key, &lease)
	if apierrors.IsNotFound(err) {
		lease = coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
		h.fill(&lease, string(raw), now)
		lease.Spec.AcquireTime = &now
		if err := h.c.Create(ctx, &lease); err != nil {
			return fmt.Errorf("report: create heartbeat Lease %s: %w", key, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("report: get heartbeat Lease %s: %w", key, err)
	}
	h.fill(&lease, string(raw), now)
	if err := h.c.Update(ctx, &lease); err != nil {
		return fmt.Errorf("report: renew heartbeat Lease %s: %w", key, err)
	}
	return nil
}

func (h *Heartbeat) fill(l *coordinationv1.Lease, caps string, now metav1.MicroTime) {
	if l.Labels == nil {
		l.Labels = map[string]string{}
	}
	l.Labels[v1alpha1.LabelHeartbeat] = "true"
	l.Labels[v1alpha1.LabelNode] = h.node
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	l.Annotations[v1alpha1.AnnotationCapabilities] = caps
	l.Spec.HolderIdentity = ptr.To(h.node)
	l.Spec.LeaseDurationSeconds = ptr.To(int32(h.duration / time.Second))
	l.Spec.RenewTime = &now
}

// Run renews the Lease every Period with what caps returns, until ctx
// ends. A failed renewal is retried at the next period (a third of the
// duration, so two failures in a row still keep the heartbeat fresh).
// result, when set, is told each renewal's outcome.
func (h *Heartbeat) Run(ctx context.Context, caps func() v1alpha1.NodeCapabilities, result func(error)) {
	t := time.NewTicker(h.Period())
	defer t.Stop()
	for {
		err := h.Beat(ctx, caps())
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			h.log.Error(err, "heartbeat failed")
		}
		if result != nil {
			result(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
