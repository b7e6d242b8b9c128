// Package controllers holds the sidewatch operator's reconcilers:
// ThreatFindings into responses (live migration of the victim VMI),
// SideChannelPolicies into status, and the migration-target labels on
// Nodes. docs/operator.md describes what they do for a cluster operator.
package controllers

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
)

// Defaults of Options.
const (
	DefaultNamespace         = "sidewatch-system"
	DefaultFindingTTL        = 7 * 24 * time.Hour
	DefaultSuspectQuarantine = time.Hour
	DefaultFindingWorkers    = 16
	DefaultWaitRequeue       = 10 * time.Second
	DefaultFollowRequeue     = time.Minute
	DefaultConflictRetry     = 200 * time.Millisecond
	DefaultLabelGrace        = time.Minute
	DefaultEventQPS          = 50
	DefaultEventBurst        = 100
)

// Options configure the reconcilers. The zero value of every field means
// its default.
type Options struct {
	// Namespace is the operator's namespace, where the agents keep their
	// heartbeat Leases.
	Namespace string
	// FindingTTL is how long a resolved finding is kept before it is
	// deleted; unresolved findings are never deleted.
	FindingTTL time.Duration
	// SuspectQuarantine is how long after a finding resolves the nodes its
	// suspects run on stay excluded as migration targets; negative turns
	// the quarantine off.
	SuspectQuarantine time.Duration
	// FindingWorkers is how many findings are reconciled at once.
	FindingWorkers int
	// WaitRequeue is how often a finding that waits (cap reached, victim
	// already migrating, no target node) looks again, on top of the events
	// that wake it.
	WaitRequeue time.Duration
	// FollowRequeue is how often an in-flight migration is looked at even
	// without an event from it.
	FollowRequeue time.Duration
	// ConflictRetry is the pause before a reconcile whose status write met
	// a newer version of the finding runs again.
	ConflictRetry time.Duration
	// LabelGrace keeps the migration-target labels this long after their
	// last use before an idle operator removes them.
	LabelGrace time.Duration
	// EventQPS and EventBurst limit the client that writes Events, apart
	// from the one that writes migrations and status.
	EventQPS   float32
	EventBurst int
	// Clock is the time source; nil is the real clock.
	Clock clock.Clock
	// Registerer receives the metrics; nil is controller-runtime's
	// registry, served on the manager's metrics endpoint.
	Registerer prometheus.Registerer
}

func (o Options) withDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.FindingTTL <= 0 {
		o.FindingTTL = DefaultFindingTTL
	}
	if o.SuspectQuarantine < 0 {
		o.SuspectQuarantine = 0
	} else if o.SuspectQuarantine == 0 {
		o.SuspectQuarantine = DefaultSuspectQuarantine
	}
	if o.FindingWorkers <= 0 {
		o.FindingWorkers = DefaultFindingWorkers
	}
	if o.WaitRequeue <= 0 {
		o.WaitRequeue = DefaultWaitRequeue
	}
	if o.FollowRequeue <= 0 {
		o.FollowRequeue = DefaultFollowRequeue
	}
	if o.ConflictRetry <= 0 {
		o.ConflictRetry = DefaultConflictRetry
	}
	if o.LabelGrace <= 0 {
		o.LabelGrace = DefaultLabelGrace
	}
	if o.EventQPS <= 0 {
		o.EventQPS = DefaultEventQPS
	}
	if o.EventBurst <= 0 {
		o.EventBurst = DefaultEventBurst
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	return o
}
