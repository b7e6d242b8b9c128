package agent

import (
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/kernel"
	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

// coschedKernel is a loader whose sched_switch program runs.
type coschedKernel struct{ pairs []kernel.CoSchedule }

func (*coschedKernel) WatchThread(int, string) error                { return nil }
func (*coschedKernel) ForgetThread(int) error                       { return nil }
func (*coschedKernel) ReadLockCounts() ([]kernel.LockCounts, error) { return nil, nil }
func (k *coschedKernel) ReadCoScheduling() ([]kernel.CoSchedule, error) {
	p := k.pairs
	k.pairs = nil
	return p, nil
}

// Suspects are weighed by how much they shared the victim's hardware over
// the evidence window, from the co-scheduling the agent reads at each
// drain: one that never ran next to the victim drops below one that did,
// and a cache finding whose every suspect is implausible loses severity,
// while a bus-lock finding and unmeasured pairs are left alone.
func TestWeighByColocation(t *testing.T) {
	const step = 100 * time.Millisecond
	t0 := time.Unix(1_800_000_000, 0)
	thread := func(vmi string) kernel.Thread { return kernel.Thread{VMI: vmi} }
	newAgent := func() *Agent {
		k := &coschedKernel{}
		a := &Agent{log: testr.New(t), kthreads: map[int]collect.StreamID{1: {}}}
		a.opts.Kernel, a.opts.DrainInterval = k, step
		// 20 s of drains: "prod/neighbour" shares the victim's LLC 30 ms
		// of every 100 ms, "prod/faraway" never runs next to it.
		for i := range 200 {
			k.pairs = []kernel.CoSchedule{
				{A: thread("prod/db"), B: thread("prod/neighbour"), LLC: 30 * time.Millisecond, SMT: 5 * time.Millisecond, Handovers: 1},
				{A: thread("prod/faraway"), B: thread("prod/other"), LLC: 50 * time.Millisecond},
			}
			a.readCoScheduling(t0.Add(time.Duration(i) * step))
		}
		return a
	}
	window := &metav1.Duration{Duration: 10 * time.Second}
	det := func(typ v1alpha1.ThreatType, suspects ...string) report.Detection {
		d := report.Detection{Type: typ, Victim: report.VMIRef{Namespace: "prod", Name: "db"}, Score: 0.95, Severity: v1alpha1.SeverityCritical,
			Time: t0.Add(19 * time.Second), FirstSeen: t0.Add(15 * time.Second), Evidence: v1alpha1.Evidence{Window: window}}
		for _, s := range suspects {
			d.Suspects = append(d.Suspects, v1alpha1.Suspect{Namespace: "prod", Name: s, Score: 0.9})
		}
		d.Suspects[0].Score = 0.95
		return d
	}

	t.Run("the suspect that never shared the cache ranks last", func(t *testing.T) {
		d := det(v1alpha1.CacheSideChannel, "faraway", "neighbour")
		newAgent().weighByColocation(&d)
		if d.Suspects[0].Name != "neighbour" || d.Suspects[0].Score != 0.9 || d.Suspects[1].Name != "faraway" || d.Suspects[1].Score >= 0.3 {
			t.Fatalf("suspects %+v", d.Suspects)
		}
		n, f := d.Suspects[0].CoScheduling, d.Suspects[1].CoScheduling
		if n == nil || f == nil || n.Weight != 1 || f.Weight != 0.25 || n.SharedLLC < 0.29 || n.SharedLLC > 0.31 || n.Handovers < 100 || f.SharedLLC != 0 || n.Window.Duration < 14*time.Second {
			t.Errorf("co-scheduling neighbour %+v, faraway %+v", n, f)
		}
		if d.Score != 0.95 || d.Severity != v1alpha1.SeverityCritical {
			t.Errorf("score %v severity %s: a plausible suspect keeps the detection whole", d.Score, d.Severity)
		}
	})
	t.Run("a cache finding with no plausible suspect loses severity", func(t *testing.T) {
		d := det(v1alpha1.CacheCovertChannel, "faraway")
		newAgent().weighByColocation(&d)
		if d.Score > 0.24 || d.Severity != v1alpha1.SeverityLow {
			t.Errorf("score %v severity %s", d.Score, d.Severity)
		}
	})
	t.Run("bus locks need no cache", func(t *testing.T) {
		d := det(v1alpha1.BusLockCovertChannel, "faraway")
		newAgent().weighByColocation(&d)
		if d.Score != 0.95 || d.Suspects[0].Score != 0.95 || d.Suspects[0].CoScheduling == nil || d.Suspects[0].CoScheduling.Weight != 1 {
			t.Errorf("detection %+v", d)
		}
	})
	t.Run("outside the measured history nothing changes", func(t *testing.T) {
		d := det(v1alpha1.CacheSideChannel, "faraway")
		d.Time, d.FirstSeen, d.Evidence.Window = t0.Add(-time.Hour), t0.Add(-time.Hour), nil
		newAgent().weighByColocation(&d)
		if d.Score != 0.95 || d.Suspects[0].CoScheduling != nil {
			t.Errorf("detection %+v", d)
		}
	})
	t.Run("without the eBPF program nothing changes", func(t *testing.T) {
		a := newAgent()
		a.opts.Kernel = nil
		d := det(v1alpha1.CacheSideChannel, "faraway")
		a.weighByColocation(&d)
		if d.Score != 0.95 || d.Suspects[0].CoScheduling != nil {
			t.Errorf("detection %+v", d)
		}
	})
}
