package report_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

var k8s client.Client

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	env, err := controlplane.Start(ctx, controlplane.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	k8s, err = client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = env.Stop()
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

func namespace(t *testing.T) string {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	name = fmt.Sprintf("%s-%d", strings.Trim(name, "-"), time.Now().UnixNano()%100000)
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestHeartbeatLease(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC))
	hb, err := report.NewHeartbeat(k8s, testr.New(t), clk, ns, "node-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	caps := v1alpha1.NodeCapabilities{Monitorable: false, Reason: v1alpha1.ReasonNoHardwareCounters, Message: "node node-a: no hardware counters", VMIs: 3, VCPUs: 6}
	if err := hb.Beat(ctx, caps); err != nil {
		t.Fatal(err)
	}
	var l coordinationv1.Lease
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "sidewatch-agent-node-a"}, &l); err != nil {
		t.Fatal(err)
	}
	if l.Labels[v1alpha1.LabelHeartbeat] != "true" || l.Labels[v1alpha1.LabelNode] != "node-a" {
		t.Errorf("labels %v", l.Labels)
	}
	if ptr.Deref(l.Spec.HolderIdentity, "") != "node-a" || ptr.Deref(l.Spec.LeaseDurationSeconds, 0) != v1alpha1.DefaultHeartbeatSeconds {
		t.Errorf("spec %+v", l.Spec)
	}
	if l.Spec.RenewTime == nil || !l.Spec.RenewTime.Time.Equal(clk.Now()) {
		t.Errorf("renewTime %v, want %v", l.Spec.RenewTime, clk.Now())
	}
	var got v1alpha1.NodeCapabilities
	if err := json.Unmarshal([]byte(l.Annotations[v1alpha1.AnnotationCapabilities]), &got); err != nil {
		t.Fatal(err)
	}
	if got.Node != "node-a" || got.Reason != v1alpha1.ReasonNoHardwareCounters || got.VCPUs != 6 {
		t.Errorf("capabilities %+v", got)
	}

	// Renewal moves renewTime and replaces the capabilities.
	clk.Step(13 * time.Second)
	caps.VMIs = 4
	if err := hb.Beat(ctx, caps); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(&l), &l); err != nil {
		t.Fatal(err)
	}
	if !l.Spec.RenewTime.Time.Equal(clk.Now()) || !strings.Contains(l.Annotations[v1alpha1.AnnotationCapabilities], `"vmis":4`) {
		t.Errorf("after renewal: renew %v caps %s", l.Spec.RenewTime, l.Annotations[v1alpha1.AnnotationCapabilities])
	}
	if hb.Period() != time.Duration(v1alpha1.DefaultHeartbeatSeconds)*time.Second/3 {
		t.Errorf("period %v", hb.Period())
	}
}

func TestHeartbeatRunRenews(t *testing.T) {
	ns := namespace(t)
	hb, err := report.NewHeartbeat(k8s, testr.New(t), nil, ns, "node-b", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	beats := 0
	hb.Run(ctx, func() v1alpha1.NodeCapabilities { beats++; return v1alpha1.NodeCapabilities{} }, func(err error) {
		if err != nil {
			t.Error(err)
		}
	})
	if beats < 3 {
		t.Errorf("%d beats in 2.5s with a 1s period, want 3", beats)
	}
	if _, err := report.NewHeartbeat(k8s, testr.New(t), nil, "", "n", 0); err == nil {
		t.Error("an empty namespace must be refused")
	}
}

func detection(ns, victim string, typ v1alpha1.ThreatType, score float64, at time.Time, suspects ...string) report.Detection {
	d := report.Detection{
		Type: typ, Detector: "cache-oscillation/v1", Node: "node-a",
		Victim: report.VMIRef{Namespace: ns, Name: victim}, VictimUID: "uid-" + "victim",
		Score: score, Time: at, FirstSeen: at.Add(-2 * time.Second), Policy: "default",
		Evidence: v1alpha1.Evidence{Window: &metav1.Duration{Duration: 10 * time.Second}, BitsPerSecond: ptr.To(20.0)},
	}
	for i, s := range suspects {
		d.Suspects = append(d.Suspects, v1alpha1.Suspect{Namespace: ns, Name: s, Score: score - 0.1*float64(i), Role: "Sender"})
	}
	return d
}

func findings(t *testing.T, ns string) []v1alpha1.ThreatFinding {
	t.Helper()
	var list v1alpha1.ThreatFindingList
	if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func TestFindingLifecycle(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(t0)
	w := report.NewFindingWriter(k8s, testr.New(t), clk, report.FindingOptions{Node: "node-a"})

	// First detection: one finding, labelled for the operator and the
	// node-restriction admission policy.
	first := detection(ns, "victim", v1alpha1.CacheCovertChannel, 0.75, t0, "spy")
	first.Snapshot = &evidence.Snapshot{CapturedAt: t0, Onset: t0.Add(-2 * time.Second),
		VMIs: []evidence.VMI{{Namespace: ns, Name: "victim", Role: evidence.RoleVictim}, {Namespace: ns, Name: "spy", Role: "Sender"}},
		Host: evidence.Host{Node: "node-a"}}
	w.Report(first)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	fs := findings(t, ns)
	if len(fs) != 1 {
		t.Fatalf("%d findings, want 1", len(fs))
	}
	f := fs[0]
	if f.Labels[v1alpha1.LabelNode] != "node-a" || f.Labels[v1alpha1.LabelVictim] != "victim" || f.Labels[v1alpha1.LabelType] != "CacheCovertChannel" {
		t.Errorf("labels %v", f.Labels)
	}
	if !strings.HasPrefix(f.Name, "victim-cache-covert-") {
		t.Errorf("name %s", f.Name)
	}
	// The evidence snapshot is stored with it (docs/forensics.md).
	if snap, cm, err := evidence.Load(ctx, k8s, &f); err != nil || snap.Finding.UID != f.UID || cm.Labels[v1alpha1.LabelNode] != "node-a" ||
		f.Annotations[evidence.AnnotationRef] == "" {
		t.Errorf("evidence: %v (annotations %v)", err, f.Annotations)
	}
	if st := w.Stats(); st.EvidenceSaved != 1 || st.EvidenceErrors != 0 {
		t.Errorf("evidence stats %+v", st)
	}
	s := f.Spec
	if s.Node != "node-a" || s.Victim.Name != "victim" || s.Victim.UID != "uid-victim" || s.Severity != v1alpha1.SeverityHigh ||
		s.Score != 0.75 || s.Detections != 1 || len(s.Suspects) != 1 || s.Policy != "default" ||
		!s.FirstSeen.Time.Equal(t0.Add(-2*time.Second)) || !s.LastSeen.Time.Equal(t0) || *s.Evidence.BitsPerSecond != 20 {
		t.Errorf("spec %+v", s)
	}

	// Later evidence within MinUpdateInterval is merged, not written.
	for i := 1; i <= 5; i++ {
		w.Report(detection(ns, "victim", v1alpha1.CacheCovertChannel, 0.6+0.05*float64(i), t0.Add(time.Duration(i)*time.Second), "spy", "helper"))
	}
	clk.Step(5 * time.Second)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(&f), &f); err != nil {
		t.Fatal(err)
	}
	if f.Spec.Detections != 1 {
		t.Fatalf("updated before MinUpdateInterval: detections %d", f.Spec.Detections)
	}
	clk.Step(6 * time.Second)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(&f), &f); err != nil {
		t.Fatal(err)
	}
	s = f.Spec
	if s.Detections != 6 || s.Score != 0.85 || !s.LastSeen.Time.Equal(t0.Add(5*time.Second)) || len(s.Suspects) != 2 ||
		s.Suspects[0].Name != "spy" || s.Suspects[0].Score != 0.85 || s.Severity != v1alpha1.SeverityHigh {
		t.Errorf("after update: %+v", s)
	}
	if len(findings(t, ns)) != 1 {
		t.Fatal("an update created a second finding")
	}

	// Another type about the same victim is another finding.
	w.Report(detection(ns, "victim", v1alpha1.BusLockCovertChannel, 0.95, clk.Now(), "spy"))
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(findings(t, ns)); n != 2 {
		t.Fatalf("%d findings, want 2", n)
	}

	// An agent restart continues the open finding instead of a duplicate.
	w2 := report.NewFindingWriter(k8s, testr.New(t), clk, report.FindingOptions{Node: "node-a"})
	w2.Report(detection(ns, "victim", v1alpha1.CacheCovertChannel, 0.5, clk.Now(), "spy"))
	if err := w2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(&f), &f); err != nil {
		t.Fatal(err)
	}
	if n := len(findings(t, ns)); n != 2 || f.Spec.Detections != 7 || f.Spec.Score != 0.85 {
		t.Fatalf("after restart: %d findings, detections %d, score %v", n, f.Spec.Detections, f.Spec.Score)
	}

	// The operator resolves it (victim migrated away): new evidence opens
	// a new finding.
	f.Status.Phase = v1alpha1.PhaseMitigated
	if err := k8s.Status().Update(ctx, &f); err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Minute)
	w2.Report(detection(ns, "victim", v1alpha1.CacheCovertChannel, 0.9, clk.Now(), "spy"))
	if err := w2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(findings(t, ns)); n != 3 {
		t.Fatalf("%d findings after the first was resolved, want 3", n)
	}
	if st := w2.Stats(); st.Created != 1 || st.Updated != 1 {
		t.Errorf("stats %+v", st)
	}
}

// An attack that fires the detectors continuously, about many victims,
// cannot flood the API server: writes stay within the rate limit and the
// number of open findings is capped.
func TestFindingFloodIsBounded(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(t0)
	w := report.NewFindingWriter(k8s, testr.New(t), clk, report.FindingOptions{
		Node: "node-a", WritesPerSecond: 2, Burst: 5, MaxActive: 8, MinUpdateInterval: 10 * time.Second,
	})
	// 20 s of a detection every 1 ms for 30 victims, flushed every 100 ms.
	for step := 0; step < 200; step++ {
		for i := 0; i < 100; i++ {
			v := fmt.Sprintf("vm-%02d", (step*100+i)%30)
			w.Report(detection(ns, v, v1alpha1.CacheSideChannel, 0.8, clk.Now(), "attacker"))
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		clk.Step(100 * time.Millisecond)
	}
	st := w.Stats()
	writes := st.Created + st.Updated
	t.Logf("%d detections: %d creates, %d updates, %d throttled, %d dropped", st.Detections, st.Created, st.Updated, st.Throttled, st.Dropped)
	// At most the burst plus 2/s over 20 s.
	if writes > 5+2*20+1 {
		t.Errorf("%d writes in 20 s, want at most %d", writes, 5+2*20+1)
	}
	if n := len(findings(t, ns)); n != 8 || st.Created != 8 {
		t.Errorf("%d findings (%d created), want the cap of 8", n, st.Created)
	}
	if st.Dropped == 0 || st.Detections != 20000 {
		t.Errorf("stats %+v", st)
	}
	// Every open finding is updated at most once per MinUpdateInterval.
	for _, f := range findings(t, ns) {
		if f.Spec.Detections < 2 {
			t.Errorf("%s was never updated: %d detections", f.Name, f.Spec.Detections)
		}
	}
	if st.Updated > 8*2+1 {
		t.Errorf("%d updates of 8 findings in 20 s with a 10 s minimum interval", st.Updated)
	}
}

func TestLabelValue(t *testing.T) {
	long := strings.Repeat("a", 70) + ".b"
	tests := []struct{ in, want string }{
		{"vm-1", "vm-1"},
		{"db.primary-0", "db.primary-0"},
	}
	for _, tt := range tests {
		if got := report.LabelValue(tt.in); got != tt.want {
			t.Errorf("LabelValue(%q) = %q", tt.in, got)
		}
	}
	got := report.LabelValue(long)
	if len(got) > 63 || !strings.HasPrefix(got, strings.Repeat("a", 52)) || got == report.LabelValue(long+"x") {
		t.Errorf("LabelValue(long) = %q", got)
	}
}

func TestMetrics(t *testing.T) {
	m, err := report.NewMetrics(func() report.AgentStats {
		return report.AgentStats{Node: "n1", VMIs: 2, VCPUs: 4, PerfFDs: 16, Samples: 1000, SamplesPerSecond: 50, LostSamples: 3,
			DroppedSamples: 1, Detections: map[v1alpha1.ThreatType]uint64{v1alpha1.CacheCovertChannel: 2}}
	})
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, want := range []string{
		"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
		"sidewatch_agent_perf_fds", "sidewatch_agent_samples_total", "sidewatch_agent_samples_per_second",
		"sidewatch_agent_samples_lost_total", "sidewatch_agent_dropped_total", "sidewatch_agent_vcpus",
		"sidewatch_agent_detections_total", "sidewatch_agent_monitorable",
	} {
		if !got[want] {
			t.Errorf("metric %s missing", want)
		}
	}
}
