// Package agent is the node agent's main loop: it follows the VMIs on its
// node and the policies that govern them (discovery), keeps a collector
// watching their vCPU threads with the right events (collect), drains the
// collector's bounded buffers into the detection engine, attributes the
// sampled guest addresses of the VMIs a detection names (introspection),
// and hands detections to the finding writer while the heartbeat reports
// what the node can observe (report).
package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/kernel"
	"github.com/sidewatch/sidewatch/node-agent/capabilities"
	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

// Detector is the detection engine as the agent drives it: observations in
// time order per vCPU, detections out. node-agent/detect's Engine is
// plugged in through an adapter (see detector.go).
type Detector interface {
	// Observe feeds one counter value (sample false) or one overflow
	// sample (sample true, value the guest IP or 0) and returns the
	// detections it completed.
	Observe(timeNS int64, stream collect.StreamID, event string, sample bool, value uint64) []report.Detection
	// Advance tells the engine the node's time reached nowNS.
	Advance(nowNS int64) []report.Detection
	// Protect marks a VMI protected by policy, or not (nil).
	Protect(vmi report.VMIRef, policy *v1alpha1.SideChannelPolicy)
	// Forget drops a VMI that left the node.
	Forget(vmi report.VMIRef)
}

// DetectorFactory builds the node's detector from the policy whose
// detector settings the node uses.
type DetectorFactory func(node string, policy *v1alpha1.SideChannelPolicy) (Detector, error)

// AddrCount is a sampled guest address, how often it was seen, and the
// vCPU and time of its latest sample (which process ran it).
type AddrCount struct {
	Addr    uint64
	Samples int64
	VCPU    int
	At      time.Time
}

// sampleContext is implemented by attributors that also serve the
// detection engine's Resolver and want each sample's vCPU and time.
type sampleContext interface {
	Sample(vmi report.VMIRef, vcpu int, t int64)
}

// vmiTracker is implemented by attributors that follow the VMIs' QEMU
// processes (to attach early, and detach when a VMI leaves).
type vmiTracker interface {
	SetVMI(vmi report.VMIRef, pid int)
	Prepare(vmi report.VMIRef)
}

// Attributor turns a VMI's sampled guest addresses into the guest programs
// that ran them (node-agent/introspect reads guest memory from the host).
type Attributor interface {
	Attribute(ctx context.Context, vmi report.VMIRef, qemuPID int, addrs []AddrCount) ([]v1alpha1.GuestProgram, error)
}

// KernelLocks is the part of kernel.Loader the agent uses.
type KernelLocks interface {
	WatchThread(tid int, vmi string) error
	ForgetThread(tid int) error
	ReadLockCounts() ([]kernel.LockCounts, error)
}

// World is the cluster as the agent sees it: discovery.Watcher, or a fixed
// world for record mode and tests.
type World interface {
	VMIs(ctx context.Context) ([]discovery.VMI, error)
	Policies(ctx context.Context) ([]v1alpha1.SideChannelPolicy, error)
	NamespaceLabels(ctx context.Context) (map[string]map[string]string, error)
	Changed() <-chan struct{}
}

// Options configure an Agent.
type Options struct {
	Node         string
	AgentVersion string
	Log          logr.Logger
	Clock        clock.WithTicker
	World        World
	// ProcRoot is the host's proc tree (discovery of QEMU processes).
	ProcRoot  string
	Collector collect.Collector
	// Capabilities are the node's, from capabilities.Probe.
	Capabilities v1alpha1.NodeCapabilities
	// Events, when set, replace what the policies and the node's PMU
	// give: software events standing in for hardware ones in tests, with
	// Rename mapping their names to the sidewatch events they stand for.
	Events []collect.Event
	Rename map[string]string
	// Detectors builds the detection engine; nil runs without detection
	// (the agent then only collects and reports health).
	Detectors DetectorFactory
	// Attributor, when set, attributes the sampled addresses of the VMIs
	// a detection names.
	Attributor Attributor
	// Kernel, when set, is the eBPF loader (kernel/): the watched vCPU
	// threads are registered with it, and its per-thread lock counts feed
	// the detector as bus_locks (KernelBusLocks: the node's bus-lock signal
	// comes from eBPF, not the PMU) and split_locks (KernelSplitLocks).
	Kernel                           KernelLocks
	KernelBusLocks, KernelSplitLocks bool
	// Evidence attaches an evidence snapshot (internal/evidence) to each
	// detection, which the finding writer stores with the finding; Host is
	// the node's part of it.
	Evidence bool
	Host     evidence.Host
	// Findings writes detections; nil only counts them.
	Findings *report.FindingWriter
	// OnDetection, when set, sees every detection after enrichment.
	OnDetection func(report.Detection)
	// RescanInterval is how often the proc tree and the world are
	// re-read (default 1s); DrainInterval how often buffers are drained
	// into the detector (default 100ms); FlushInterval how often due
	// findings are written (default 1s).
	RescanInterval, DrainInterval, FlushInterval time.Duration
	BufferLimits                                 collect.BufferLimits
}

// Agent is the node agent's loop.
type Agent struct {
	opts    Options
	log     logr.Logger
	clock   clock.WithTicker
	tracker *discovery.Tracker
	buffers *collect.Buffers

	// loop state (Run's goroutine only)
	detector      Detector
	nodePolicy    *v1alpha1.SideChannelPolicy
	protected     map[discovery.VMIRef]string
	collectCfg    *collect.Config
	collecting    bool
	collectorDone chan error
	vmis          map[discovery.VMIRef]discovery.VMI
	pids          map[discovery.VMIRef]int
	streams       map[collect.StreamID]bool
	kthreads      map[int]collect.StreamID
	history       map[discovery.VMIRef]*vmiHistory
	cosched       *coschedHistory
	captured      map[captureKey]capture
	unavailable   []string
	lastNoEvents  string
	gov           Governance
	vmiList       []discovery.VMI
	synced        bool
	lastThreads   []collect.Thread
	feed          feeder
	attrQueue     chan attributionJob

	lastDrain atomic.Int64

	mu           sync.Mutex
	stats        report.AgentStats
	sampleReason string
	lastS        uint64
	lastT        time.Time
}

// New makes an agent.
func New(opts Options) (*Agent, error) {
	if opts.Node == "" {
		return nil, errors.New("agent: node name is empty")
	}
	if opts.World == nil || opts.Collector == nil {
		return nil, errors.New("agent: World and Collector are required")
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.ProcRoot == "" {
		opts.ProcRoot = "/proc"
	}
	if opts.RescanInterval <= 0 {
		opts.RescanInterval = time.Second
	}
	if opts.DrainInterval <= 0 {
		opts.DrainInterval = 100 * time.Millisecond
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	a := &Agent{
		opts:      opts,
		log:       opts.Log,
		clock:     opts.Clock,
		tracker:   &discovery.Tracker{Scanner: discovery.Scanner{ProcRoot: opts.ProcRoot}},
		buffers:   collect.NewBuffers(opts.BufferLimits),
		protected: map[discovery.VMIRef]string{},
		vmis:      map[discovery.VMIRef]discovery.VMI{},
		pids:      map[discovery.VMIRef]int{},
		streams:   map[collect.StreamID]bool{},
		kthreads:  map[int]collect.StreamID{},
		history:   map[discovery.VMIRef]*vmiHistory{},
		captured:  map[captureKey]capture{},
		attrQueue: make(chan attributionJob, 64),
	}
	a.feed.a = a
	a.stats.Node = opts.Node
	a.stats.Monitorable = opts.Capabilities.Monitorable
	a.stats.Detections = map[v1alpha1.ThreatType]uint64{}
	return a, nil
}

// Run runs until ctx ends, then closes the collector (every perf
// descriptor and ring) and writes the findings still due.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.attributeLoop(ctx) }()
	defer func() {
		cancel()
		if err := a.opts.Collector.Close(); err != nil {
			a.log.Error(err, "closing the collector")
		}
		if a.collectorDone != nil {
			<-a.collectorDone
		}
		wg.Wait()
		if a.opts.Findings != nil {
			fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := a.opts.Findings.Flush(fctx); err != nil {
				a.log.Error(err, "writing the last findings")
			}
			fcancel()
		}
	}()

	a.refresh(ctx, true)
	rescan := a.clock.NewTicker(a.opts.RescanInterval)
	defer rescan.Stop()
	drain := a.clock.NewTicker(a.opts.DrainInterval)
	defer drain.Stop()
	flush := a.clock.NewTicker(a.opts.FlushInterval)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.opts.World.Changed():
			a.refresh(ctx, true)
		case <-rescan.C():
			a.refresh(ctx, false)
		case <-drain.C():
			a.drain()
		case <-a.buffers.Pressure():
			a.drain() // a burst of samples: drain before the buffers overflow
		case <-flush.C():
			if a.opts.Findings != nil {
				if err := a.opts.Findings.Flush(ctx); err != nil && ctx.Err() == nil {
					a.log.Error(err, "writing findings")
				}
			}
		case err := <-a.collectorDone:
			a.collectorDone = nil
			a.collecting = false
			if err != nil {
				return fmt.Errorf("agent: collector %s stopped: %w", a.opts.Collector.Name(), err)
			}
			if ctx.Err() == nil {
				return fmt.Errorf("agent: collector %s stopped", a.opts.Collector.Name())
			}
		}
	}
}

// refresh brings the detector and the collector in line with the world
// (re-read when world is true: something changed in the cluster) and the
// proc tree (re-read every time: QEMU processes and vCPU threads come and
// go without an API event).
func (a *Agent) refresh(ctx context.Context, world bool) {
	if world || !a.synced {
		vmis, err := a.opts.World.VMIs(ctx)
		if err != nil {
			a.log.Error(err, "listing VMIs")
			return
		}
		policies, err := a.opts.World.Policies(ctx)
		if err != nil {
			a.log.Error(err, "listing policies")
			return
		}
		nsLabels, err := a.opts.World.NamespaceLabels(ctx)
		if err != nil {
			a.log.Error(err, "listing namespaces")
			return
		}
		a.gov, a.vmiList, a.synced = Govern(policies, nsLabels, vmis), vmis, true
		a.applyDetector(a.gov)
		a.applyVMIs(vmis, a.gov)
	}
	a.applyCollection(ctx, a.gov, a.vmiList)
}

// applyDetector rebuilds the detector when the node's policy changes and
// keeps every VMI's protection current.
func (a *Agent) applyDetector(g Governance) {
	if a.opts.Detectors == nil {
		return
	}
	if g.Node == nil {
		a.nodePolicy, a.detector = nil, nil
		clear(a.protected)
		return
	}
	if a.detector == nil || a.nodePolicy == nil || a.nodePolicy.Name != g.Node.Name || !reflect.DeepEqual(a.nodePolicy.Spec, g.Node.Spec) {
		d, err := a.opts.Detectors(a.opts.Node, g.Node)
		if err != nil {
			a.log.Error(err, "building the detection engine", "policy", g.Node.Name)
			return
		}
		a.log.Info("detection engine configured", "policy", g.Node.Name)
		a.detector, a.nodePolicy = d, g.Node.DeepCopy()
		clear(a.protected)
	}
	for ref := range a.protected {
		if _, ok := g.ByVMI[ref]; !ok {
			a.detector.Protect(report.VMIRef(ref), nil)
			delete(a.protected, ref)
		}
	}
	for ref, p := range g.ByVMI {
		if a.protected[ref] != p.Name+"/"+p.ResourceVersion {
			a.detector.Protect(report.VMIRef(ref), p)
			a.protected[ref] = p.Name + "/" + p.ResourceVersion
		}
	}
}

// applyVMIs forgets the VMIs that left the node.
func (a *Agent) applyVMIs(vmis []discovery.VMI, g Governance) {
	now := make(map[discovery.VMIRef]discovery.VMI, len(vmis))
	for _, v := range vmis {
		now[v.Ref] = v
	}
	for ref := range a.vmis {
		if _, ok := now[ref]; ok {
			continue
		}
		a.log.Info("VMI left the node", "vmi", ref)
		if a.detector != nil {
			a.detector.Forget(report.VMIRef(ref))
		}
		delete(a.history, ref)
		delete(a.pids, ref)
		if t, ok := a.opts.Attributor.(vmiTracker); ok {
			t.SetVMI(report.VMIRef(ref), 0)
		}
		for s := range a.streams {
			if s.Namespace == ref.Namespace && s.VMI == ref.Name {
				a.buffers.Forget(s)
				delete(a.streams, s)
			}
		}
	}
	for ref := range now {
		if _, ok := a.vmis[ref]; !ok {
			_, prot := g.ByVMI[ref]
			a.log.Info("VMI on the node", "vmi", ref, "protected", prot)
		}
	}
	a.vmis = now
}

// applyCollection configures the collector for the node's policies and
// points it at the vCPU threads (or, for a replay, the VMIs).
func (a *Agent) applyCollection(ctx context.Context, g Governance, vmis []discovery.VMI) {
	if g.Node == nil {
		// Nothing on this node is protected: watch nothing.
		a.setThreads(nil, vmis, nil)
		a.setStats(func(s *report.AgentStats) { s.VMIs, s.VCPUs, s.Unresolved = len(vmis), 0, 0 })
		return
	}
	events, skipped := a.opts.Events, []string(nil)
	if events == nil {
		events, skipped = capabilities.EventsFor(a.opts.Capabilities, g.Collection.Events, g.Collection.SampledEvents)
	}
	a.unavailable = skipped
	if _, replay := a.opts.Collector.(collect.VMISource); !replay && len(events) == 0 {
		// Unsupported hardware is a state, not an error: say it once, keep
		// heartbeating, try again when policies change.
		if msg := strings.Join(skipped, "; "); msg != a.lastNoEvents {
			a.log.Info("no counter events available on this node; not collecting", "reasons", msg)
			a.lastNoEvents = msg
		}
		a.setThreads(nil, vmis, nil)
		a.setStats(func(s *report.AgentStats) { s.VMIs, s.UnavailableEvents = len(vmis), len(skipped) })
		return
	}
	a.lastNoEvents = ""
	cfg := collect.Config{
		Interval:     interval(g.Collection),
		Events:       events,
		SamplePeriod: uint64(g.Collection.SamplePeriod),
		GuestOnly:    true,
		BranchStack:  a.opts.Capabilities.PMU.BranchStack,
	}
	if cfg.SamplePeriod == 0 {
		cfg.SamplePeriod = 10000
	}
	if a.collectCfg == nil || !reflect.DeepEqual(*a.collectCfg, cfg) {
		if err := a.opts.Collector.Configure(cfg); err != nil {
			a.log.Error(err, "configuring the collector")
			return
		}
		a.log.Info("collecting", "events", cfg.EventNames(), "interval", cfg.Interval, "samplePeriod", cfg.SamplePeriod, "unavailable", skipped)
		a.collectCfg = &cfg
	}
	if !a.collecting {
		a.collecting = true
		a.collectorDone = make(chan error, 1)
		done := a.collectorDone
		go func() { done <- a.opts.Collector.Start(ctx, a.buffers) }()
	}

	var targets []discovery.Target
	unresolved := 0
	if _, replay := a.opts.Collector.(collect.VMISource); !replay {
		var un []discovery.VMI
		var err error
		targets, un, err = a.tracker.Refresh(a.clock.Now(), vmis)
		if err != nil {
			a.log.Error(err, "reading the proc tree")
			return
		}
		unresolved = len(un)
	}
	a.setThreads(targets, vmis, &unresolved)
}

func (a *Agent) setThreads(targets []discovery.Target, vmis []discovery.VMI, unresolved *int) {
	if vs, ok := a.opts.Collector.(collect.VMISource); ok {
		var keys []collect.VMIKey
		if unresolved != nil { // collecting
			for _, v := range vmis {
				keys = append(keys, collect.VMIKey{Namespace: v.Ref.Namespace, Name: v.Ref.Name})
			}
		}
		if err := vs.SetVMIs(keys); err != nil {
			a.log.Error(err, "setting the replayed VMIs")
		}
		a.setStats(func(s *report.AgentStats) { s.VMIs, s.VCPUs, s.Unresolved = len(keys), 0, 0 })
		return
	}
	var threads []collect.Thread
	tracker, _ := a.opts.Attributor.(vmiTracker)
	for _, t := range targets {
		a.pids[t.VMI.Ref] = t.Process.PID
		if tracker != nil {
			tracker.SetVMI(report.VMIRef(t.VMI.Ref), t.Process.PID)
			if _, ok := a.protected[t.VMI.Ref]; ok {
				tracker.Prepare(report.VMIRef(t.VMI.Ref))
			}
		}
		for _, v := range t.Process.VCPUs {
			s := collect.StreamID{Namespace: t.VMI.Ref.Namespace, VMI: t.VMI.Ref.Name, VCPU: v.Index}
			threads = append(threads, collect.Thread{Stream: s, PID: t.Process.PID, TID: v.TID})
			a.streams[s] = true
		}
	}
	// Unchanged most of the time: then the collector is left alone.
	if !slices.Equal(threads, a.lastThreads) || threads == nil {
		if err := a.opts.Collector.SetThreads(threads); err != nil {
			a.log.Error(err, "watching vCPU threads")
		}
		a.lastThreads = threads
		a.setKernelThreads(threads)
	}
	a.setStats(func(s *report.AgentStats) {
		s.VMIs, s.VCPUs = len(targets), len(threads)
		if unresolved != nil {
			s.Unresolved = *unresolved
		}
	})
}

// drain feeds everything buffered to the detector, then lets it advance
// to now (quiet VMIs still close their windows).
func (a *Agent) drain() {
	a.buffers.Drain(&a.feed)
	now := a.clock.Now()
	a.lastDrain.Store(now.UnixNano())
	a.readKernelLocks(now)
	a.readCoScheduling(now)
	if a.detector != nil {
		a.handle(a.detector.Advance(now.UnixNano()))
	}
	cs := a.opts.Collector.Stats()
	bs := a.buffers.Stats()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &a.stats
	s.PerfFDs, s.PerfGroups = cs.PerfFDs, cs.Groups
	s.Samples = max(cs.Samples, bs.Samples)
	s.LostSamples, s.DroppedSamples, s.DroppedReadings = max(cs.Lost, bs.Lost), bs.DroppedSamples, bs.DroppedReadings
	s.Readings, s.ReadErrors, s.ThreadsGone, s.FDBudgetRefused = cs.Readings, cs.ReadErrors, cs.ThreadsGone, cs.FDBudgetRefused
	s.SampleMode, s.LostSlots = cs.SampleMode, cs.LostSlots
	a.sampleReason = cs.SampleModeReason
	if len(cs.Unavailable) > 0 {
		s.UnavailableEvents = len(cs.Unavailable) + len(a.unavailable)
	} else {
		s.UnavailableEvents = len(a.unavailable)
	}
	if !a.lastT.IsZero() {
		if dt := now.Sub(a.lastT).Seconds(); dt > 0 {
			s.SamplesPerSecond = float64(s.Samples-a.lastS) / dt
		}
	}
	a.lastS, a.lastT = s.Samples, now
	if a.opts.Findings != nil {
		s.Findings = a.opts.Findings.Stats()
		s.ActiveFindings = a.opts.Findings.Active()
	}
}

// feeder turns drained readings and samples into observations.
type feeder struct{ a *Agent }

func (f *feeder) name(ev string) string {
	if to, ok := f.a.opts.Rename[ev]; ok {
		return to
	}
	return ev
}

func (f *feeder) Reading(r *collect.Reading) {
	h := f.a.historyOf(r.Stream)
	d := f.a.detector
	for i, ev := range r.Events {
		if !r.Has(i) {
			continue
		}
		name := f.name(ev)
		h.addCounter(r.Time, name, r.Values[i])
		if d != nil {
			f.a.handle(d.Observe(r.Time, r.Stream, name, false, r.Values[i]))
		}
	}
}

func (f *feeder) Sample(s *collect.Sample) {
	ip := s.IP
	if !s.Mode.Guest() {
		ip = 0 // a host address says nothing about the guest
	}
	name := f.name(s.Event)
	if ip != 0 {
		f.a.historyOf(s.Stream).addSample(s.Time, s.Stream.VCPU, name, ip)
		if sc, ok := f.a.opts.Attributor.(sampleContext); ok {
			sc.Sample(report.VMIRef{Namespace: s.Stream.Namespace, Name: s.Stream.VMI}, s.Stream.VCPU, s.Time)
		}
	}
	if d := f.a.detector; d != nil {
		f.a.handle(d.Observe(s.Time, s.Stream, name, true, ip))
	}
}

func (f *feeder) BranchTargets(stream collect.StreamID, targets []uint64) {
	h := f.a.historyOf(stream)
	now := f.a.clock.Now().UnixNano()
	for _, t := range targets {
		h.addSample(now, stream.VCPU, "", t)
	}
}

func (a *Agent) historyOf(s collect.StreamID) *vmiHistory {
	ref := discovery.VMIRef{Namespace: s.Namespace, Name: s.VMI}
	h := a.history[ref]
	if h == nil {
		bin := int64(100 * time.Millisecond)
		if a.collectCfg != nil {
			bin = int64(a.collectCfg.Interval)
		}
		h = newVMIHistory(bin)
		a.history[ref] = h
	}
	return h
}

// handle enriches detections with what the agent knows (UIDs, the node,
// the signals it lacked) and queues them for attribution and reporting.
func (a *Agent) handle(dets []report.Detection) {
	for _, d := range dets {
		d.Node = a.opts.Node
		d.VictimUID = a.uid(discovery.VMIRef(d.Victim))
		d.Suspects = slices.Clone(d.Suspects)
		for i := range d.Suspects {
			d.Suspects[i].UID = a.uid(discovery.VMIRef{Namespace: d.Suspects[i].Namespace, Name: d.Suspects[i].Name})
		}
		d.Evidence.UnavailableSignals = a.unavailableSignals()
		a.weighByColocation(&d)
		if a.opts.Evidence {
			a.captureEvidence(&d, a.clock.Now())
		}
		a.setStats(func(s *report.AgentStats) { s.Detections[d.Type]++ })
		a.log.Info("detection", "type", d.Type, "victim", d.Victim, "score", d.Score, "suspects", len(d.Suspects))
		job := attributionJob{det: d, victim: a.attributionInput(discovery.VMIRef(d.Victim))}
		for _, s := range d.Suspects {
			job.suspects = append(job.suspects, a.attributionInput(discovery.VMIRef{Namespace: s.Namespace, Name: s.Name}))
		}
		select {
		case a.attrQueue <- job:
		default:
			// Attribution is behind: report without it rather than wait.
			a.report(withoutIntrospection(job, "not captured: the agent's attribution queue was full"))
		}
	}
}

func (a *Agent) uid(ref discovery.VMIRef) types.UID { return a.vmis[ref].UID }

func (a *Agent) unavailableSignals() []string {
	out := slices.Clone(a.unavailable)
	if len(out) > 32 {
		out = out[:32]
	}
	return out
}

// Healthy reports an error when the loop has not drained the buffers for a
// while (stuck on something): the liveness probe restarts the agent then.
func (a *Agent) Healthy() error {
	last := a.lastDrain.Load()
	if last == 0 {
		return nil // starting
	}
	if age := a.clock.Since(time.Unix(0, last)); age > 30*time.Second+100*a.opts.DrainInterval {
		return fmt.Errorf("the agent loop last ran %v ago", age.Round(time.Second))
	}
	return nil
}

// Stats is a snapshot for the metrics endpoint.
func (a *Agent) Stats() report.AgentStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.stats
	s.Detections = make(map[v1alpha1.ThreatType]uint64, len(a.stats.Detections))
	for k, v := range a.stats.Detections {
		s.Detections[k] = v
	}
	return s
}

func (a *Agent) setStats(f func(*report.AgentStats)) {
	a.mu.Lock()
	f(&a.stats)
	a.mu.Unlock()
}

// Capabilities is the node's capabilities with the agent's live counts, for
// the heartbeat.
func (a *Agent) Capabilities() v1alpha1.NodeCapabilities {
	c := a.opts.Capabilities
	s := a.Stats()
	c.VMIs, c.VCPUs = int32(s.VMIs), int32(s.VCPUs)
	c.FileDescriptors.PerfEvents = uint64(s.PerfFDs)
	c.Signals = a.withSampleSignal(c.Signals, s.SampleMode)
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		c.FileDescriptors.Open = uint64(len(ents))
	}
	return c
}
