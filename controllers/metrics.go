package controllers

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	virtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// scrapeTimeout bounds the cache reads of one scrape.
const scrapeTimeout = 5 * time.Second

// Metrics are the operator's Prometheus metrics. Counters and histograms
// move when the reconciler records a transition; the finding and
// in-flight gauges are computed from the cache at each scrape, so they can
// never drift from what the API server holds.
type Metrics struct {
	MigrationsStarted   prometheus.Counter
	MigrationsSucceeded prometheus.Counter
	MigrationsFailed    prometheus.Counter
	MigrationDuration   prometheus.Histogram
	// CreationLatency is the time from a finding's creation to the creation
	// of its first migration.
	CreationLatency prometheus.Histogram

	state *stateCollector
}

// NewMetrics builds the metrics; the gauges read findings and migrations
// through reader (the manager's cache).
func NewMetrics(reader client.Reader) *Metrics {
	return &Metrics{
		MigrationsStarted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidewatch_migrations_started_total",
			Help: "Live migrations of victim VMIs that sidewatch created (every attempt counts).",
		}),
		MigrationsSucceeded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidewatch_migrations_succeeded_total",
			Help: "Sidewatch migrations that moved the victim off the affected node.",
		}),
		MigrationsFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidewatch_migrations_failed_total",
			Help: "Sidewatch migration attempts that failed (each may be retried).",
		}),
		MigrationDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sidewatch_migration_duration_seconds",
			Help:    "Time from the creation of a successful sidewatch migration to its completion (whole seconds, as the API records them).",
			Buckets: []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800},
		}),
		CreationLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sidewatch_finding_to_migration_seconds",
			Help:    "Time from the creation of a ThreatFinding to the creation of its first migration, waits (cooldown, cap) included.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800},
		}),
		state: &stateCollector{
			reader: reader,
			findings: prometheus.NewDesc("sidewatch_findings",
				"ThreatFindings by type, severity and phase.", []string{"type", "severity", "phase"}, nil),
			inFlight: prometheus.NewDesc("sidewatch_migrations_in_flight",
				"Sidewatch migrations not yet finished, across the cluster.", nil, nil),
			unmonitored: prometheus.NewDesc("sidewatch_node_unmonitored",
				"1 for each node hosting VMIs a policy selects that its agent cannot watch, with the reason (from the policies' status).",
				[]string{"node", "reason"}, nil),
			scrapeErrors: prometheus.NewDesc("sidewatch_metrics_scrape_errors",
				"1 when the last scrape could not read the cache, else 0.", nil, nil),
		},
	}
}

// Register adds every metric to reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{
		m.MigrationsStarted, m.MigrationsSucceeded, m.MigrationsFailed,
		m.MigrationDuration, m.CreationLatency, m.state,
	} {
		errs = append(errs, reg.Register(c))
	}
	return errors.Join(errs...)
}

// stateCollector computes gauges from the cache at scrape time.
type stateCollector struct {
	reader                                        client.Reader
	findings, inFlight, unmonitored, scrapeErrors *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.findings
	ch <- c.inFlight
	ch <- c.unmonitored
	ch <- c.scrapeErrors
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	failed := 0.0
	var findings v1alpha1.ThreatFindingList
	if err := c.reader.List(ctx, &findings); err != nil {
		failed = 1
	} else {
		for key, n := range countFindings(findings.Items) {
			ch <- prometheus.MustNewConstMetric(c.findings, prometheus.GaugeValue, float64(n), key.typ, key.severity, key.phase)
		}
	}
	var migrations virtv1.VirtualMachineInstanceMigrationList
	if err := c.reader.List(ctx, &migrations, client.MatchingLabels{v1alpha1.LabelManagedBy: v1alpha1.ManagedByValue}); err != nil {
		failed = 1
	} else {
		n := 0
		for i := range migrations.Items {
			if !migrations.Items[i].IsFinal() {
				n++
			}
		}
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(n))
	}
	var policies v1alpha1.SideChannelPolicyList
	if err := c.reader.List(ctx, &policies); err != nil {
		failed = 1
	} else {
		for node, reason := range unmonitoredNodes(policies.Items) {
			ch <- prometheus.MustNewConstMetric(c.unmonitored, prometheus.GaugeValue, 1, node, reason)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeErrors, prometheus.GaugeValue, failed)
}

// unmonitoredNodes merges the policies' unmonitored nodes: node -> reason.
// Policies read the same heartbeats, so they agree unless one status is a
// moment older; the policy whose name sorts first then wins.
func unmonitoredNodes(policies []v1alpha1.SideChannelPolicy) map[string]string {
	sorted := append([]v1alpha1.SideChannelPolicy(nil), policies...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	out := map[string]string{}
	for _, p := range sorted {
		for _, u := range p.Status.UnmonitoredNodes {
			if _, ok := out[u.Node]; !ok {
				out[u.Node] = u.Reason
			}
		}
	}
	return out
}

type findingKey struct{ typ, severity, phase string }

// countFindings groups findings by type, severity and phase. A finding the
// operator has not reconciled yet counts as Detected.
func countFindings(items []v1alpha1.ThreatFinding) map[findingKey]int {
	out := map[findingKey]int{}
	for i := range items {
		f := &items[i]
		phase := f.Status.Phase
		if phase == "" {
			phase = v1alpha1.PhaseDetected
		}
		out[findingKey{string(f.Spec.Type), string(f.Spec.Severity), string(phase)}]++
	}
	return out
}
