package controllers

import (
	"encoding/json"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// nodeWatch is what the operator concludes from a node's heartbeat.
type nodeWatch struct {
	// Monitored is true when the agent is alive and can watch VMIs there.
	Monitored bool
	// Reason and Message explain an unmonitored node
	// (v1alpha1.UnmonitoredNode).
	Reason, Message string
	// StaleAt is when a fresh heartbeat turns stale unless renewed; zero
	// when it is not fresh.
	StaleAt time.Time
}

// readHeartbeat interprets the heartbeat Lease of node (nil when there is
// none) at now, following the contract in api/v1alpha1/heartbeat.go:
//
//   - no Lease: NoAgent;
//   - renewTime missing, or older than leaseDurationSeconds
//     (DefaultHeartbeatSeconds when unset): HeartbeatStale;
//   - the capabilities annotation missing, not NodeCapabilities JSON, or
//     naming another node: HeartbeatInvalid;
//   - Monitorable false: the agent's own reason and message
//     (NoHardwareCounters when it gives none);
//   - otherwise monitored.
func readHeartbeat(node string, lease *coordinationv1.Lease, now time.Time) nodeWatch {
	if lease == nil {
		return nodeWatch{Reason: v1alpha1.ReasonNoAgent,
			Message: fmt.Sprintf("node %s: no sidewatch agent heartbeat (Lease %s); is the node agent DaemonSet running there?", node, v1alpha1.HeartbeatLeaseName(node))}
	}
	duration := time.Duration(v1alpha1.DefaultHeartbeatSeconds) * time.Second
	if d := lease.Spec.LeaseDurationSeconds; d != nil && *d > 0 {
		duration = time.Duration(*d) * time.Second
	}
	if lease.Spec.RenewTime == nil {
		return nodeWatch{Reason: v1alpha1.ReasonHeartbeatStale,
			Message: fmt.Sprintf("node %s: agent heartbeat was never renewed", node)}
	}
	staleAt := lease.Spec.RenewTime.Add(duration)
	if !now.Before(staleAt) {
		return nodeWatch{Reason: v1alpha1.ReasonHeartbeatStale,
			Message: fmt.Sprintf("node %s: agent heartbeat last renewed %s ago (lease duration %s)",
				node, now.Sub(lease.Spec.RenewTime.Time).Round(time.Second), duration)}
	}
	raw, ok := lease.Annotations[v1alpha1.AnnotationCapabilities]
	if !ok {
		return nodeWatch{StaleAt: staleAt, Reason: v1alpha1.ReasonHeartbeatInvalid,
			Message: fmt.Sprintf("node %s: heartbeat has no %s annotation", node, v1alpha1.AnnotationCapabilities)}
	}
	var caps v1alpha1.NodeCapabilities
	if err := json.Unmarshal([]byte(raw), &caps); err != nil {
		return nodeWatch{StaleAt: staleAt, Reason: v1alpha1.ReasonHeartbeatInvalid,
			Message: fmt.Sprintf("node %s: heartbeat annotation %s is not NodeCapabilities JSON: %v", node, v1alpha1.AnnotationCapabilities, err)}
	}
	if caps.Node != "" && caps.Node != node {
		return nodeWatch{StaleAt: staleAt, Reason: v1alpha1.ReasonHeartbeatInvalid,
			Message: fmt.Sprintf("node %s: heartbeat capabilities describe node %q", node, caps.Node)}
	}
	if !caps.Monitorable {
		w := nodeWatch{StaleAt: staleAt, Reason: caps.Reason, Message: caps.Message}
		if w.Reason == "" {
			w.Reason = v1alpha1.ReasonNoHardwareCounters
		}
		if w.Message == "" {
			w.Message = fmt.Sprintf("node %s: the agent reports it cannot monitor VMIs here (%s)", node, w.Reason)
		}
		return w
	}
	return nodeWatch{Monitored: true, StaleAt: staleAt}
}
