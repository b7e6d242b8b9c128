package report

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// AgentStats is a snapshot of the agent's own state and cost, taken at
// scrape time.
type AgentStats struct {
	Node        string
	Monitorable bool
	// VMIs and VCPUs watched; Unresolved VMIs have no QEMU process found.
	VMIs, VCPUs, Unresolved int
	// PerfFDs are open perf event descriptors, PerfGroups their groups.
	PerfFDs, PerfGroups int
	// Samples received; SamplesPerSecond over the last agent tick.
	Samples          uint64
	SamplesPerSecond float64
	// LostSamples were dropped by the kernel (ring full); DroppedSamples
	// and DroppedReadings by the agent's bounded buffers.
	LostSamples, DroppedSamples, DroppedReadings uint64
	Readings, ReadErrors                         uint64
	ThreadsGone, FDBudgetRefused                 uint64
	// UnavailableEvents counts configured events this node cannot count.
	UnavailableEvents int
	Detections        map[v1alpha1.ThreatType]uint64
	Findings          FindingStats
	ActiveFindings    int
	HeartbeatFailures uint64
	// LastHeartbeat is a Unix time in seconds, 0 before the first.
	LastHeartbeat float64
	// SampleMode is how overflow samples reach the agent: "kernel"
	// (binned by the eBPF sampler, read at each interval) or "ring" (perf
	// ring buffers); "" when nothing is sampled. LostSlots counts time
	// slots of the kernel's sample timelines overwritten before a read.
	SampleMode string
	LostSlots  uint64
}

// Metrics exposes AgentStats, plus the process's CPU seconds, RSS and
// open descriptors (process_* from the Prometheus process collector) and
// Go runtime metrics, on a registry of its own.
type Metrics struct {
	Registry *prometheus.Registry
	snapshot func() AgentStats
}

// NewMetrics makes the registry; snapshot is called on every scrape.
func NewMetrics(snapshot func() AgentStats) (*Metrics, error) {
	m := &Metrics{Registry: prometheus.NewRegistry(), snapshot: snapshot}
	for _, c := range []prometheus.Collector{
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		m,
	} {
		if err := m.Registry.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("sidewatch_agent_"+name, help, labels, nil)
}

var (
	descMonitorable   = desc("monitorable", "1 when the node can be monitored (see the heartbeat's reason otherwise).", "node")
	descVMIs          = desc("vmis", "VMIs on this node the agent watches.")
	descVCPUs         = desc("vcpus", "vCPU threads the agent watches.")
	descUnresolved    = desc("unresolved_vmis", "VMIs on this node whose QEMU process was not found.")
	descPerfFDs       = desc("perf_fds", "Open perf event file descriptors.")
	descPerfGroups    = desc("perf_groups", "Open perf event groups.")
	descSamples       = desc("samples_total", "Overflow samples received from the kernel.")
	descSampleRate    = desc("samples_per_second", "Overflow samples per second over the last tick.")
	descLost          = desc("samples_lost_total", "Samples the kernel dropped because a ring buffer was full.")
	descDropped       = desc("dropped_total", "Samples or readings the agent's bounded buffers overwrote before they were analysed.", "kind")
	descReadings      = desc("readings_total", "Counter group readings.")
	descReadErrors    = desc("read_errors_total", "Failed or malformed counter and ring reads.")
	descThreadsGone   = desc("threads_exited_total", "Watched vCPU threads that exited.")
	descFDRefused     = desc("fd_budget_refused_total", "vCPU threads not watched for lack of file descriptors.")
	descUnavailable   = desc("unavailable_events", "Configured counter events this node cannot count.")
	descDetections    = desc("detections_total", "Detections by threat type.", "type")
	descFindingWrites = desc("finding_writes_total", "ThreatFinding writes by result (created, updated, throttled, dropped, error; evidence and evidence_error for evidence snapshots).", "result")
	descActive        = desc("active_findings", "Findings the agent is following.")
	descHBFailures    = desc("heartbeat_failures_total", "Failed heartbeat renewals.")
	descHBLast        = desc("heartbeat_last_success_timestamp_seconds", "Unix time of the last successful heartbeat.")
	descSampleMode    = desc("sample_mode", "1 for the way overflow samples reach the agent: kernel (binned by the eBPF sampler, read at each interval) or ring (a perf ring buffer per vCPU).", "mode")
	descLostSlots     = desc("sample_slots_lost_total", "Time slots of the kernel's sample timelines overwritten before the agent read them.")
)

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMonitorable, descVMIs, descVCPUs, descUnresolved, descPerfFDs, descPerfGroups,
		descSamples, descSampleRate, descLost, descDropped, descReadings, descReadErrors, descThreadsGone, descFDRefused,
		descUnavailable, descDetections, descFindingWrites, descActive, descHBFailures, descHBLast, descSampleMode, descLostSlots} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	s := m.snapshot()
	g := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	c := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	mon := 0.0
	if s.Monitorable {
		mon = 1
	}
	g(descMonitorable, mon, s.Node)
	g(descVMIs, float64(s.VMIs))
	g(descVCPUs, float64(s.VCPUs))
	g(descUnresolved, float64(s.Unresolved))
	g(descPerfFDs, float64(s.PerfFDs))
	g(descPerfGroups, float64(s.PerfGroups))
	c(descSamples, s.Samples)
	g(descSampleRate, s.SamplesPerSecond)
	c(descLost, s.LostSamples)
	c(descDropped, s.DroppedSamples, "sample")
	c(descDropped, s.DroppedReadings, "reading")
	c(descReadings, s.Readings)
	c(descReadErrors, s.ReadErrors)
	c(descThreadsGone, s.ThreadsGone)
	c(descFDRefused, s.FDBudgetRefused)
	g(descUnavailable, float64(s.UnavailableEvents))
	for _, t := range []v1alpha1.ThreatType{v1alpha1.CacheCovertChannel, v1alpha1.CacheSideChannel, v1alpha1.BusLockCovertChannel} {
		c(descDetections, s.Detections[t], string(t))
	}
	c(descFindingWrites, s.Findings.Created, "created")
	c(descFindingWrites, s.Findings.Updated, "updated")
	c(descFindingWrites, s.Findings.Throttled, "throttled")
	c(descFindingWrites, s.Findings.Dropped, "dropped")
	c(descFindingWrites, s.Findings.Errors, "error")
	c(descFindingWrites, s.Findings.EvidenceSaved, "evidence")
	c(descFindingWrites, s.Findings.EvidenceErrors, "evidence_error")
	g(descActive, float64(s.ActiveFindings))
	c(descHBFailures, s.HeartbeatFailures)
	g(descHBLast, s.LastHeartbeat)
	for _, m := range []string{"kernel", "ring"} {
		v := 0.0
		if s.SampleMode == m {
			v = 1
		}
		g(descSampleMode, v, m)
	}
	c(descLostSlots, s.LostSlots)
}
