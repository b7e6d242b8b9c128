package agent_test

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/kernel"
	"github.com/sidewatch/sidewatch/node-agent/agent"
	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/discovery/fakeproc"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

func policy(name string, prio int32, ns, vmi *metav1.LabelSelector, mutate ...func(*v1alpha1.SideChannelPolicySpec)) v1alpha1.SideChannelPolicy {
	p := v1alpha1.SideChannelPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.SideChannelPolicySpec{Priority: prio, NamespaceSelector: ns, VMISelector: vmi}}
	for _, m := range mutate {
		m(&p.Spec)
	}
	p.Spec.Default()
	return p
}

func sel(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func vmi(ns, name string, labels ...string) discovery.VMI {
	l := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		l[labels[i]] = labels[i+1]
	}
	return discovery.VMI{Ref: discovery.VMIRef{Namespace: ns, Name: name}, UID: types.UID("uid-" + name), Labels: l}
}

func TestGovern(t *testing.T) {
	ns := map[string]map[string]string{"prod": {"tier": "prod"}, "dev": {"tier": "dev"}}
	vmis := []discovery.VMI{vmi("prod", "db", "crypto", "yes"), vmi("prod", "web"), vmi("dev", "ci")}
	fast := func(s *v1alpha1.SideChannelPolicySpec) {
		s.Collection.Interval = &metav1.Duration{Duration: 20 * time.Millisecond}
		s.Collection.Events = []v1alpha1.CounterEvent{v1alpha1.EventLLCMisses}
		s.Collection.SampledEvents = []v1alpha1.CounterEvent{v1alpha1.EventLLCMisses}
		s.Collection.SamplePeriod = 500
	}
	tests := []struct {
		name     string
		policies []v1alpha1.SideChannelPolicy
		want     map[string]string
		node     string
		interval time.Duration
		period   int64
	}{
		{"no policies protect nothing", nil, map[string]string{}, "", 0, 0},
		{"an empty policy protects everything",
			[]v1alpha1.SideChannelPolicy{policy("all", 0, nil, nil)},
			map[string]string{"prod/db": "all", "prod/web": "all", "dev/ci": "all"}, "all", 100 * time.Millisecond, 10000},
		{"namespace and VMI selectors",
			[]v1alpha1.SideChannelPolicy{policy("crypto", 0, sel("tier", "prod"), sel("crypto", "yes"))},
			map[string]string{"prod/db": "crypto"}, "crypto", 100 * time.Millisecond, 10000},
		{"priority wins, then the first name; collection merges",
			[]v1alpha1.SideChannelPolicy{
				policy("b-all", 0, nil, nil),
				policy("a-all", 0, nil, nil),
				policy("z-crypto", 10, nil, sel("crypto", "yes"), fast),
			},
			map[string]string{"prod/db": "z-crypto", "prod/web": "a-all", "dev/ci": "a-all"}, "z-crypto", 20 * time.Millisecond, 500},
		{"a bad selector skips the policy",
			[]v1alpha1.SideChannelPolicy{policy("bad", 5, &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "x", Operator: "Bogus"}}}, nil)},
			map[string]string{}, "", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := agent.Govern(tt.policies, ns, vmis)
			got := map[string]string{}
			for ref, p := range g.ByVMI {
				got[ref.String()] = p.Name
			}
			if len(got) != len(tt.want) {
				t.Fatalf("governed %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s governed by %q, want %q", k, got[k], v)
				}
			}
			node := ""
			if g.Node != nil {
				node = g.Node.Name
			}
			if node != tt.node {
				t.Errorf("node policy %q, want %q", node, tt.node)
			}
			if tt.interval != 0 && (g.Collection.Interval.Duration != tt.interval || g.Collection.SamplePeriod != tt.period || len(g.Collection.Events) != 7) {
				t.Errorf("collection %+v", g.Collection)
			}
		})
	}
}

// fakeWorld is a cluster the test edits.
type fakeWorld struct {
	mu       sync.Mutex
	vmis     []discovery.VMI
	policies []v1alpha1.SideChannelPolicy
	changed  chan struct{}
}

func newWorld(policies []v1alpha1.SideChannelPolicy, vmis ...discovery.VMI) *fakeWorld {
	return &fakeWorld{vmis: vmis, policies: policies, changed: make(chan struct{}, 1)}
}

func (w *fakeWorld) VMIs(context.Context) ([]discovery.VMI, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.vmis), nil
}
func (w *fakeWorld) Policies(context.Context) ([]v1alpha1.SideChannelPolicy, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.policies), nil
}
func (w *fakeWorld) NamespaceLabels(context.Context) (map[string]map[string]string, error) {
	return map[string]map[string]string{}, nil
}
func (w *fakeWorld) Changed() <-chan struct{} { return w.changed }
func (w *fakeWorld) set(f func(w *fakeWorld)) {
	w.mu.Lock()
	f(w)
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// fakeCollector records what the agent asks of it and lets the test push
// readings through the sink the agent gave it.
type fakeCollector struct {
	mu         sync.Mutex
	cfg        *collect.Config
	configures int
	threads    []collect.Thread
	sink       collect.Sink
	closed     bool
}

func (c *fakeCollector) Name() string                { return "fake" }
func (c *fakeCollector) Probe(context.Context) error { return nil }
func (c *fakeCollector) Configure(cfg collect.Config) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg = &cfg
	c.configures++
	return nil
}
func (c *fakeCollector) SetThreads(t []collect.Thread) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.threads = slices.Clone(t)
	return nil
}
func (c *fakeCollector) Start(ctx context.Context, sink collect.Sink) error {
	c.mu.Lock()
	c.sink = sink
	c.mu.Unlock()
	<-ctx.Done()
	return nil
}
func (c *fakeCollector) Stats() collect.Stats { return collect.Stats{} }
func (c *fakeCollector) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}
func (c *fakeCollector) state() (cfg *collect.Config, threads []collect.Thread, sink collect.Sink) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg, slices.Clone(c.threads), c.sink
}

// thresholdDetector reports a CacheSideChannel on a protected victim when
// another VMI's llc_misses reading reaches 1000: a stand-in for the engine
// that lets the test see the loop end to end.
type thresholdDetector struct {
	mu        sync.Mutex
	protected map[report.VMIRef]string
	forgotten []report.VMIRef
	observed  int
}

func (d *thresholdDetector) Observe(t int64, s collect.StreamID, ev string, sample bool, v uint64) []report.Detection {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.observed++
	if sample || ev != "llc_misses" || v < 1000 {
		return nil
	}
	for victim, pol := range d.protected {
		if victim.Name == s.VMI {
			continue
		}
		return []report.Detection{{
			Type: v1alpha1.CacheSideChannel, Detector: "threshold/test", Victim: victim, Policy: pol,
			Suspects: []v1alpha1.Suspect{{Namespace: s.Namespace, Name: s.VMI, Score: 0.9, Role: "Attacker"}},
			Score:    0.9, Severity: v1alpha1.SeverityCritical, Time: time.Unix(0, t), FirstSeen: time.Unix(0, t),
		}}
	}
	return nil
}
func (d *thresholdDetector) Advance(int64) []report.Detection { return nil }
func (d *thresholdDetector) Protect(v report.VMIRef, p *v1alpha1.SideChannelPolicy) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p == nil {
		delete(d.protected, v)
		return
	}
	d.protected[v] = p.Name
}
func (d *thresholdDetector) Forget(v report.VMIRef) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.forgotten = append(d.forgotten, v)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLoopFollowsVMIsAndReportsDetections(t *testing.T) {
	tree := fakeproc.New(t.TempDir())
	victimTIDs, _ := tree.AddQEMU(fakeproc.QEMU{PID: 100, Namespace: "prod", Name: "victim", PodUID: "11111111-1111-1111-1111-111111111111", VCPUs: 2})
	spyTIDs, _ := tree.AddQEMU(fakeproc.QEMU{PID: 200, Namespace: "prod", Name: "spy", PodUID: "22222222-2222-2222-2222-222222222222", VCPUs: 1})
	victim := vmi("prod", "victim", "protect", "yes")
	victim.PodUIDs = []string{"11111111-1111-1111-1111-111111111111"}
	spy := vmi("prod", "spy")
	spy.PodUIDs = []string{"22222222-2222-2222-2222-222222222222"}
	world := newWorld(nil, victim, spy)

	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	k8s := fake.NewClientBuilder().WithScheme(scheme).WithStatusSubresource(&v1alpha1.ThreatFinding{}).Build()
	findings := report.NewFindingWriter(k8s, testr.New(t), nil, report.FindingOptions{Node: "n1"})

	col := &fakeCollector{}
	det := &thresholdDetector{protected: map[report.VMIRef]string{}}
	seen := make(chan report.Detection, 10)
	a, err := agent.New(agent.Options{
		Node: "n1", Log: testr.New(t), World: world, ProcRoot: tree.Root, Collector: col,
		Events:         []collect.Event{{Name: "llc_misses", Sample: true}, {Name: "cycles"}},
		Detectors:      func(string, *v1alpha1.SideChannelPolicy) (agent.Detector, error) { return det, nil },
		Findings:       findings,
		OnDetection:    func(d report.Detection) { seen <- d },
		RescanInterval: 50 * time.Millisecond, DrainInterval: 20 * time.Millisecond, FlushInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	// No policy: nothing is protected, nothing is watched.
	time.Sleep(150 * time.Millisecond)
	if cfg, threads, _ := col.state(); cfg != nil || len(threads) != 0 {
		t.Fatalf("collecting without a policy: cfg %v threads %v", cfg, threads)
	}

	// A policy protects the victim: every VMI on the node is watched (the
	// spy too: its counters are the evidence).
	world.set(func(w *fakeWorld) {
		w.policies = []v1alpha1.SideChannelPolicy{policy("protect", 0, nil, sel("protect", "yes"))}
	})
	eventually(t, "threads of both VMIs", func() bool { _, th, s := col.state(); return len(th) == 3 && s != nil })
	cfg, threads, sink := col.state()
	if cfg.Interval != 100*time.Millisecond || cfg.SamplePeriod != 10000 || !cfg.GuestOnly || len(cfg.Events) != 2 {
		t.Errorf("config %+v", cfg)
	}
	var tids []int
	for _, th := range threads {
		tids = append(tids, th.TID)
	}
	slices.Sort(tids)
	if want := []int{victimTIDs[0], victimTIDs[1], spyTIDs[0]}; !slices.Equal(tids, want) {
		t.Errorf("watching %v, want %v", tids, want)
	}

	// The spy's misses cross the threshold: a finding about the victim,
	// with UIDs filled in by the agent.
	spyStream := collect.StreamID{Namespace: "prod", VMI: "spy", VCPU: 0}
	sink.Sample(&collect.Sample{Stream: spyStream, Time: time.Now().UnixNano(), Event: "llc_misses", IP: 0x7f0000001000, Mode: collect.ModeGuestUser})
	sink.Reading(&collect.Reading{Stream: spyStream, Time: time.Now().UnixNano(), Events: []string{"llc_misses", "cycles"}, Values: [collect.MaxEvents]uint64{5000, 1}, Valid: 3})
	var d report.Detection
	select {
	case d = <-seen:
	case <-time.After(5 * time.Second):
		t.Fatal("no detection")
	}
	if d.Node != "n1" || d.VictimUID != "uid-victim" || d.Suspects[0].UID != "uid-spy" || d.Policy != "protect" {
		t.Errorf("detection %+v", d)
	}
	eventually(t, "a ThreatFinding", func() bool {
		var l v1alpha1.ThreatFindingList
		_ = k8s.List(context.Background(), &l, client.InNamespace("prod"))
		return len(l.Items) == 1 && l.Items[0].Spec.Victim.UID == "uid-victim"
	})

	// A vCPU thread of the victim exits: the collector stops watching it.
	if err := tree.RemoveThread(100, victimTIDs[1]); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the exited thread dropped", func() bool { _, th, _ := col.state(); return len(th) == 2 })

	// The spy migrates away: forgotten by the detector, its threads dropped.
	world.set(func(w *fakeWorld) { w.vmis = []discovery.VMI{victim} })
	eventually(t, "the spy forgotten", func() bool {
		det.mu.Lock()
		defer det.mu.Unlock()
		return slices.Contains(det.forgotten, report.VMIRef{Namespace: "prod", Name: "spy"})
	})
	eventually(t, "only the victim's thread", func() bool { _, th, _ := col.state(); return len(th) == 1 })
	if st := a.Stats(); st.VMIs != 1 || st.VCPUs != 1 || st.Detections[v1alpha1.CacheSideChannel] != 1 {
		t.Errorf("stats %+v", st)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !col.closed {
		t.Error("the collector was not closed at shutdown")
	}
}

// A node without usable counters keeps running (heartbeat, discovery) but
// never configures the collector, and does not retry in a loop.
func TestLoopWithoutCounters(t *testing.T) {
	tree := fakeproc.New(t.TempDir())
	_, _ = tree.AddQEMU(fakeproc.QEMU{PID: 100, Namespace: "prod", Name: "victim", VCPUs: 2})
	world := newWorld([]v1alpha1.SideChannelPolicy{policy("all", 0, nil, nil)}, vmi("prod", "victim"))
	col := &fakeCollector{}
	caps := v1alpha1.NodeCapabilities{Node: "n1", Monitorable: false, Reason: v1alpha1.ReasonNoHardwareCounters,
		PMU: v1alpha1.PMUCapabilities{Vendor: "AuthenticAMD", Family: 25, Model: 17}}
	for _, e := range v1alpha1.AllCounterEvents {
		caps.PMU.Events = append(caps.PMU.Events, v1alpha1.EventCapability{Event: e, Reason: "no hardware counters (perf_event_open: ENOENT)"})
	}
	a, err := agent.New(agent.Options{Node: "n1", Log: testr.New(t), World: world, ProcRoot: tree.Root, Collector: col, Capabilities: caps,
		RescanInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if col.configures != 0 || len(col.threads) != 0 {
		t.Errorf("collector configured %d times, %d threads", col.configures, len(col.threads))
	}
	st := a.Stats()
	if st.Monitorable || st.UnavailableEvents != 7 || st.VMIs != 1 {
		t.Errorf("stats %+v", st)
	}
	if c := a.Capabilities(); c.Reason != v1alpha1.ReasonNoHardwareCounters || c.FileDescriptors.Open == 0 {
		t.Errorf("capabilities %+v", c)
	}
}

// recordingDetector keeps what the agent feeds it, per stream and event.
type recordingDetector struct {
	mu      sync.Mutex
	sums    map[collect.StreamID]map[string]uint64
	samples map[collect.StreamID]int
	last    map[collect.StreamID]int64
	ordered bool
}

func newRecordingDetector() *recordingDetector {
	return &recordingDetector{sums: map[collect.StreamID]map[string]uint64{}, samples: map[collect.StreamID]int{}, last: map[collect.StreamID]int64{}, ordered: true}
}

func (d *recordingDetector) Observe(t int64, s collect.StreamID, ev string, sample bool, v uint64) []report.Detection {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t < d.last[s] {
		d.ordered = false
	}
	d.last[s] = t
	if sample {
		d.samples[s]++
		return nil
	}
	if d.sums[s] == nil {
		d.sums[s] = map[string]uint64{}
	}
	d.sums[s][ev] += v
	return nil
}
func (d *recordingDetector) Advance(int64) []report.Detection                   { return nil }
func (d *recordingDetector) Protect(report.VMIRef, *v1alpha1.SideChannelPolicy) {}
func (d *recordingDetector) Forget(report.VMIRef)                               {}

// fakeKernel plays the eBPF loader.
type fakeKernel struct {
	mu      sync.Mutex
	watched map[int]string
	forgot  []int
	counts  []kernel.LockCounts
}

func (k *fakeKernel) WatchThread(tid int, vmi string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.watched[tid] = vmi
	return nil
}
func (k *fakeKernel) ForgetThread(tid int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.watched, tid)
	k.forgot = append(k.forgot, tid)
	return nil
}
func (k *fakeKernel) ReadLockCounts() ([]kernel.LockCounts, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.counts
	k.counts = nil
	return c, nil
}

// Lock counts from the eBPF programs reach the detector as the bus_locks
// and split_locks of the vCPU's stream.
func TestKernelLockCounts(t *testing.T) {
	tree := fakeproc.New(t.TempDir())
	tids, _ := tree.AddQEMU(fakeproc.QEMU{PID: 100, Namespace: "prod", Name: "vm", VCPUs: 2})
	world := newWorld([]v1alpha1.SideChannelPolicy{policy("all", 0, nil, nil)}, vmi("prod", "vm"))
	k := &fakeKernel{watched: map[int]string{}, counts: []kernel.LockCounts{{TID: tids[1], BusLockExits: 5, BusLockCoincident: 1, SplitLocks: 2}, {TID: 99999, BusLockExits: 7}}}
	det := newRecordingDetector()
	a, err := agent.New(agent.Options{
		Node: "n1", Log: testr.New(t), World: world, ProcRoot: tree.Root, Collector: &fakeCollector{},
		Events:    []collect.Event{{Name: "llc_misses"}},
		Detectors: func(string, *v1alpha1.SideChannelPolicy) (agent.Detector, error) { return det, nil },
		Kernel:    k, KernelBusLocks: true, KernelSplitLocks: true,
		RescanInterval: 20 * time.Millisecond, DrainInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	s1 := collect.StreamID{Namespace: "prod", VMI: "vm", VCPU: 1}
	eventually(t, "lock counts observed", func() bool {
		det.mu.Lock()
		defer det.mu.Unlock()
		return det.sums[s1]["bus_locks"] == 6 && det.sums[s1]["split_locks"] == 2
	})
	k.mu.Lock()
	if len(k.watched) != 2 || k.watched[tids[0]] != "prod/vm" {
		t.Errorf("watched %v", k.watched)
	}
	k.mu.Unlock()
	world.set(func(w *fakeWorld) { w.vmis = nil })
	eventually(t, "threads forgotten", func() bool { k.mu.Lock(); defer k.mu.Unlock(); return len(k.watched) == 0 && len(k.forgot) == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	det.mu.Lock()
	defer det.mu.Unlock()
	for s := range det.sums {
		if s.VMI != "vm" {
			t.Errorf("counts of an unwatched thread reached the detector: %v", s)
		}
	}
}

func TestQMPSocket(t *testing.T) {
	tree := fakeproc.New(t.TempDir())
	tests := []struct {
		args []string
		want string // relative to the process's root; "" for an error
	}{
		{[]string{"qemu", "-qmp", "unix:/tmp/g/qmp.sock,server=on,wait=off"}, "/tmp/g/qmp.sock"},
		{[]string{"qemu", "-chardev", "socket,id=sw,path=/var/run/sidewatch/qmp.sock,server=on,wait=off", "-mon", "chardev=sw,id=swmon,mode=control"}, "/var/run/sidewatch/qmp.sock"},
		// libvirt passes its monitor as a descriptor: nothing to connect to.
		{[]string{"qemu", "-chardev", "socket,id=charmonitor,fd=30,server=on,wait=off", "-mon", "chardev=charmonitor,id=monitor,mode=control"}, ""},
		// A chardev socket that is not a monitor.
		{[]string{"qemu", "-chardev", "socket,id=serial0,path=/tmp/console.sock", "-serial", "chardev:serial0"}, ""},
	}
	for i, tt := range tests {
		pid := 100 + i
		if err := tree.Add(fakeproc.Process{PID: pid, Comm: "qemu", Args: tt.args}); err != nil {
			t.Fatal(err)
		}
		got, err := agent.QMPSocket(tree.Root, pid)
		if tt.want == "" {
			if err == nil {
				t.Errorf("%v: got %q, want an error", tt.args, got)
			}
			continue
		}
		if want := filepath.Join(tree.Root, strconv.Itoa(pid), "root", tt.want); err != nil || got != want {
			t.Errorf("%v: got %q, %v; want %q", tt.args, got, err, want)
		}
	}
}
