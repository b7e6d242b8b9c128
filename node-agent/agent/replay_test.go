package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/node-agent/agent"
	"github.com/sidewatch/sidewatch/node-agent/collect/replay"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

// The demo path: a real agent loop fed by a recorded covert channel
// instead of perf, running the real detection engine, ends in a
// ThreatFinding naming the protected receiver and the sender.
func TestReplayedAttackBecomesFinding(t *testing.T) {
	path := filepath.Join(t.TempDir(), "covert.trace")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	covertTrace(f, 40, 200_000_000, 100_000_000, 10000)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// The cluster's VMIs on this node, matched to the trace by
	// namespace/name; only the receiver is protected.
	world := newWorld([]v1alpha1.SideChannelPolicy{policy("protect", 0, nil, sel("protect", "yes"))},
		vmi("prod", "receiver", "protect", "yes"), vmi("prod", "sender"), vmi("prod", "web"))
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	// The fake client gives created objects no UID; the API server does,
	// and evidence ownership needs it.
	k8s := fake.NewClientBuilder().WithScheme(scheme).WithStatusSubresource(&v1alpha1.ThreatFinding{}).
		WithInterceptorFuncs(interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if obj.GetUID() == "" {
				obj.SetUID(types.UID(fmt.Sprintf("uid-%d", time.Now().UnixNano())))
			}
			return c.Create(ctx, obj, opts...)
		}}).Build()
	findings := report.NewFindingWriter(k8s, testr.New(t), nil, report.FindingOptions{Node: "n1"})
	// 40 s of trace delivered 20 times faster than real time.
	col := replay.New(testr.New(t), replay.Options{Path: path, Speed: 20})
	a, err := agent.New(agent.Options{
		Node: "n1", Log: testr.New(t), World: world, Collector: col,
		Capabilities: v1alpha1.NodeCapabilities{Node: "n1", Monitorable: true},
		Detectors:    agent.DetectFactory(testr.New(t), nil, nil),
		Evidence:     true, Host: evidence.Host{CPUModel: "test CPU", HardwareCounters: true},
		Findings: findings, FlushInterval: 50 * time.Millisecond, DrainInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	eventually := func() *v1alpha1.ThreatFinding {
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			var l v1alpha1.ThreatFindingList
			_ = k8s.List(context.Background(), &l, client.InNamespace("prod"))
			if len(l.Items) > 0 {
				return &l.Items[0]
			}
			time.Sleep(50 * time.Millisecond)
		}
		return nil
	}
	got := eventually()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}()
	if got == nil {
		t.Fatalf("no finding; agent stats %+v, replay rows %v", a.Stats(), func() [2]uint64 { r, s := col.Rows(); return [2]uint64{r, s} }())
	}
	s := got.Spec
	if s.Type != v1alpha1.CacheCovertChannel || s.Victim.Name != "receiver" || s.Victim.UID != "uid-receiver" ||
		len(s.Suspects) == 0 || s.Suspects[0].Name != "sender" || s.Suspects[0].UID != "uid-sender" ||
		s.Node != "n1" || s.Policy != "protect" || s.Evidence.Period == nil || s.Detector == "" {
		t.Errorf("finding %+v", s)
	}
	t.Logf("finding %s: score %.2f period %v bits/s %v detections %d", got.Name, s.Score, s.Evidence.Period.Duration, *s.Evidence.BitsPerSecond, s.Detections)

	// The evidence snapshot, stored as the forensics contract says: a
	// ConfigMap owned by the finding, referenced by an annotation.
	// The agent stores the ConfigMap, then records the annotation: wait
	// for both.
	snap, cm, err := evidence.Load(context.Background(), k8s, got)
	for deadline := time.Now().Add(5 * time.Second); (err != nil || got.Annotations[evidence.AnnotationRef] == "") && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		_ = k8s.Get(context.Background(), client.ObjectKeyFromObject(got), got)
		snap, cm, err = evidence.Load(context.Background(), k8s, got)
	}
	if err != nil {
		t.Fatalf("evidence: %v", err)
	}
	// The annotation follows the ConfigMap: read the finding again.
	for deadline := time.Now().Add(5 * time.Second); got.Annotations[evidence.AnnotationRef] == "" && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		_ = k8s.Get(context.Background(), client.ObjectKeyFromObject(got), got)
	}
	if cm.Labels[v1alpha1.LabelNode] != "n1" || got.Annotations[evidence.AnnotationRef] == "" {
		t.Errorf("evidence ConfigMap labels %v, finding annotations %v", cm.Labels, got.Annotations)
	}
	roles := map[string]string{}
	for _, v := range snap.VMIs {
		roles[v.Name] = v.Role
	}
	series := map[string]int{}
	for _, x := range snap.Series {
		series[x.VMI+" "+string(x.Event)] = len(x.Values)
	}
	if roles["receiver"] != evidence.RoleVictim || roles["sender"] == "" || snap.Host.Node != "n1" || snap.Host.CPUModel != "test CPU" ||
		series["prod/receiver llc_misses"] < 50 || series["prod/sender llc_misses"] < 50 || len(snap.Samples) == 0 ||
		snap.Detector.Name == "" || snap.Detector.Autocorrelation == nil || snap.Finding.Name != got.Name {
		t.Errorf("snapshot: roles %v series %v samples %d detector %+v finding %+v", roles, series, len(snap.Samples), snap.Detector, snap.Finding)
	}
}
