package replay_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/collect/replay"
)

const trace = `# sidewatch-trace: v1
# cpu: GenuineIntel family 6 model 143
time_ns,node,namespace,vmi,vcpu,event,value
1000000000,n9,prod,victim,0,llc_references,500
1000000000,n9,prod,victim,0,llc_misses,40
1000000000,n9,prod,spy,0,llc_misses,900
1050000000,n9,prod,victim,0,sample.llc_misses,0x7f0012345678
1060000000,n9,prod,victim,0,sample.llc_misses,0xffffffff81001000
1070000000,n9,prod,victim,0,sample.llc_misses,0
1100000000,n9,prod,victim,0,llc_references,510
1100000000,n9,prod,victim,0,llc_misses,41
1100000000,n9,prod,victim,1,llc_misses,7
`

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }
func (f *fakeClock) Sleep(_ context.Context, d time.Duration) error {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
	return nil
}

type sink struct {
	mu       sync.Mutex
	readings []collect.Reading
	samples  []collect.Sample
}

func (s *sink) Reading(r *collect.Reading) {
	s.mu.Lock()
	s.readings = append(s.readings, *r)
	s.mu.Unlock()
}
func (s *sink) Sample(x *collect.Sample) {
	s.mu.Lock()
	s.samples = append(s.samples, *x)
	s.mu.Unlock()
}
func (s *sink) Branches(collect.StreamID, int64, []collect.Branch) {}
func (s *sink) Lost(collect.StreamID, uint64)                      {}

func writeTrace(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "attack.trace")
	if err := os.WriteFile(p, []byte(trace), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReplayWatchedVMIsAtPace(t *testing.T) {
	start := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	clk := &fakeClock{now: start}
	c := replay.New(testr.New(t), replay.Options{Path: writeTrace(t), Now: clk.Now, Sleep: clk.Sleep})
	if err := c.Probe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.SetVMIs([]collect.VMIKey{{Namespace: "prod", Name: "victim"}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var s sink
	errc := make(chan error, 1)
	go func() { errc <- c.Start(ctx, &s) }()
	for !c.Done() {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if read, skipped := c.Rows(); read != 9 || skipped != 1 {
		t.Errorf("rows read %d skipped %d, want 9 and 1 (the spy is not watched)", read, skipped)
	}
	base := start.UnixNano()
	if len(s.readings) != 3 {
		t.Fatalf("%d readings, want 3: %+v", len(s.readings), s.readings)
	}
	r0 := s.readings[0]
	if r0.Time != base || r0.Values[0] != 500 || r0.Values[1] != 40 || !r0.Has(0) || !r0.Has(1) || r0.Has(2) || r0.Stream.VMI != "victim" {
		t.Errorf("first reading %+v", r0)
	}
	if r := s.readings[2]; r.Stream.VCPU != 1 || r.Time != base+100_000_000 || r.Values[1] != 7 {
		t.Errorf("third reading %+v", r)
	}
	if len(s.samples) != 3 {
		t.Fatalf("%d samples", len(s.samples))
	}
	if x := s.samples[0]; x.IP != 0x7f0012345678 || x.Mode != collect.ModeGuestUser || x.Time != base+50_000_000 || x.Event != "llc_misses" {
		t.Errorf("sample 0 %+v", x)
	}
	if s.samples[1].Mode != collect.ModeGuestKernel || s.samples[2].Mode != collect.ModeUnknown {
		t.Errorf("modes %v %v", s.samples[1].Mode, s.samples[2].Mode)
	}
	// It took the trace's 100 ms of replay time.
	if d := clk.Now().Sub(start); d != 100*time.Millisecond {
		t.Errorf("replay advanced the clock by %v, want 100ms", d)
	}
}

func TestReplayLoopContinuesInTime(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	c := replay.New(testr.New(t), replay.Options{Path: writeTrace(t), Now: clk.Now, Sleep: clk.Sleep, Loop: true, Speed: 2})
	_ = c.SetVMIs([]collect.VMIKey{{Namespace: "prod", Name: "spy"}})
	ctx, cancel := context.WithCancel(context.Background())
	var s sink
	errc := make(chan error, 1)
	go func() { errc <- c.Start(ctx, &s) }()
	for {
		s.mu.Lock()
		n := len(s.readings)
		s.mu.Unlock()
		if n >= 3 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-errc
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 1; i < len(s.readings); i++ {
		if s.readings[i].Time <= s.readings[i-1].Time {
			t.Fatalf("looped replay went back in time: %d then %d", s.readings[i-1].Time, s.readings[i].Time)
		}
	}
}

func TestReplayBadTrace(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad")
	_ = os.WriteFile(p, []byte("not a trace\n"), 0o644)
	if err := replay.New(testr.New(t), replay.Options{Path: p}).Probe(context.Background()); err == nil {
		t.Error("Probe of a bad trace must fail")
	}
	if err := replay.New(testr.New(t), replay.Options{Path: "/nonexistent"}).Probe(context.Background()); err == nil {
		t.Error("Probe of a missing file must fail")
	}
}
