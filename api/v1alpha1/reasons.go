package v1alpha1

// Condition reasons of a ThreatFinding, written by the operator. Each
// condition type (FindingActionable, FindingMigrating, FindingMitigated)
// carries one of them; docs/operator.md lists which reason goes with which
// phase.
const (
	// Actionable=True: a policy governs the victim and the finding is at
	// least as severe as its response.minSeverity.
	ReasonPolicyMatched = "PolicyMatched"
	// Actionable=False: no SideChannelPolicy selects the victim.
	ReasonNoPolicy = "NoPolicy"
	// Actionable=False: the finding is less severe than the governing
	// policy's response.minSeverity.
	ReasonBelowMinSeverity = "BelowMinSeverity"
	// Actionable=False: the victim VMI no longer exists (or was re-created
	// with another uid), so there is nothing left to protect.
	ReasonVictimGone = "VictimGone"

	// Migrating=True: a VirtualMachineInstanceMigration of the victim is in
	// flight.
	ReasonMigrationInProgress = "MigrationInProgress"
	// Migrating=False, waiting: the cluster-wide cap on concurrent sidewatch
	// migrations is reached.
	ReasonMigrationThrottled = "MigrationThrottled"
	// Migrating=False, waiting: sidewatch moved this VMI less than the
	// policy's response.cooldown ago.
	ReasonCooldown = "Cooldown"
	// Migrating=False, waiting: another migration of the victim (not one of
	// this finding's) is in flight.
	ReasonVictimAlreadyMigrating = "VictimAlreadyMigrating"
	// Migrating=False, waiting: no node may receive the victim (every node
	// is excluded, unschedulable or not Ready).
	ReasonNoTargetNode = "NoTargetNode"
	// Migrating=False, waiting: the last attempt failed; the next one starts
	// at status.migration.nextAttemptTime.
	ReasonRetryScheduled = "RetryScheduled"
	// Migrating=False / Mitigated=True: the victim left the affected node.
	ReasonMigrationSucceeded = "MigrationSucceeded"
	// Migrating=False / Mitigated=False: every attempt failed.
	ReasonMigrationFailed = "MigrationFailed"
	// Migrating=False / Mitigated=False: the victim's LiveMigratable
	// condition is False, so it cannot be moved without downtime.
	ReasonNotLiveMigratable = "NotLiveMigratable"
	// Migrating=False / Mitigated=True: the governing policy only alerts.
	ReasonAlertOnly = "AlertOnly"
	// Migrating=False / Mitigated=False: another finding about the same
	// victim owns the migration (status.mergedInto).
	ReasonMergedIntoFinding = "MergedIntoFinding"
	// Mitigated=True: the victim had already left the affected node (moved
	// by someone else) and sits on no excluded node.
	ReasonVictimLeftNode = "VictimLeftNode"
	// Mitigated=False: the response has not completed yet.
	ReasonMitigationPending = "MitigationPending"
)

// ReasonHeartbeatInvalid is an UnmonitoredNode reason: the node's heartbeat
// Lease is fresh but its capabilities annotation is missing or cannot be
// parsed, or names another node.
const ReasonHeartbeatInvalid = "HeartbeatInvalid"

// Labels the operator owns on objects other than its own.
const (
	// LabelMigrationTarget on a Node says whether sidewatch may move a
	// victim there. Every sidewatch migration carries
	// spec.addedNodeSelector {LabelMigrationTarget: MigrationTargetAllowed},
	// so only nodes labelled "allowed" can receive a victim. The operator
	// sets it on every node while sidewatch has migration work and removes
	// it when there is none (docs/operator.md).
	LabelMigrationTarget = "sidewatch.io/migration-target"
	// MigrationTargetAllowed marks a node that may receive a victim.
	MigrationTargetAllowed = "allowed"
	// MigrationTargetExcluded marks a node that must not: it is the
	// affected node of an unresolved finding or hosts a suspect.
	MigrationTargetExcluded = "excluded"

	// LabelAttempt on a sidewatch VirtualMachineInstanceMigration is the
	// attempt number (1, 2, ...) within its finding.
	LabelAttempt = "sidewatch.io/attempt"
	// LabelManagedBy is the well-known managed-by label; sidewatch
	// migrations carry ManagedByValue.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue marks objects the sidewatch operator created.
	ManagedByValue = "sidewatch-operator"
)
