package collect_test

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/node-agent/collect"
)

func TestScaleDelta(t *testing.T) {
	const max = math.MaxUint64
	tests := []struct {
		name                  string
		pv, v, pe, e, pr, r   uint64
		want                  uint64
		multiplexed, notSched bool
	}{
		{name: "on the PMU the whole interval", pv: 100, v: 1100, pe: 10, e: 110, pr: 10, r: 110, want: 1000},
		{name: "half the time: doubled", pv: 0, v: 500, pe: 0, e: 100, pr: 0, r: 50, want: 1000, multiplexed: true},
		{name: "a quarter of the time", pv: 1000, v: 1250, pe: 1000, e: 2000, pr: 400, r: 650, want: 1000, multiplexed: true},
		// Earlier intervals were multiplexed differently: only this
		// interval's ratio counts (cumulative scaling would give 1200).
		{name: "deltas, not cumulative ratio", pv: 100, v: 1100, pe: 1000, e: 2000, pr: 500, r: 1500, want: 1000},
		{name: "rounds to nearest", pv: 0, v: 1, pe: 0, e: 3, pr: 0, r: 2, want: 2, multiplexed: true},
		{name: "thread did not run: nothing counted", pv: 7, v: 7, pe: 50, e: 50, pr: 40, r: 40, want: 0},
		{name: "enabled but never scheduled: unknown", pv: 7, v: 7, pe: 50, e: 90, pr: 40, r: 40, notSched: true},
		{name: "running ahead of enabled (clock skew) is not scaled down", pv: 0, v: 10, pe: 0, e: 99, pr: 0, r: 100, want: 10},
		{name: "no 64-bit overflow in the product", pv: 0, v: 1 << 62, pe: 0, e: 1 << 40, pr: 0, r: 1 << 39, want: 1 << 63, multiplexed: true},
		{name: "saturates beyond 2^64", pv: 0, v: max, pe: 0, e: 4, pr: 0, r: 1, want: max, multiplexed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, mux, err := collect.ScaleDelta(tt.pv, tt.v, tt.pe, tt.e, tt.pr, tt.r)
			if tt.notSched {
				if !errors.Is(err, collect.ErrNotScheduled) {
					t.Fatalf("err = %v, want ErrNotScheduled", err)
				}
				return
			}
			if err != nil || got != tt.want || mux != tt.multiplexed {
				t.Errorf("got %d multiplexed=%v err=%v, want %d multiplexed=%v", got, mux, err, tt.want, tt.multiplexed)
			}
		})
	}
	if _, _, err := collect.ScaleDelta(10, 5, 0, 1, 0, 1); err == nil {
		t.Error("a counter going backwards must be an error")
	}
}

// A slow reference: floating point extrapolation.
func TestScaleDeltaAgreesWithFloat(t *testing.T) {
	for _, c := range [][3]uint64{{12345, 1000, 333}, {1, 10, 3}, {999999, 7, 5}, {10, 100, 100}, {5_000_000, 100_000_000, 25_000_000}} {
		dv, de, dr := c[0], c[1], c[2]
		got, _, err := collect.ScaleDelta(0, dv, 0, de, 0, dr)
		if err != nil {
			t.Fatal(err)
		}
		want := uint64(math.Round(float64(dv) * float64(de) / float64(dr)))
		if got != want {
			t.Errorf("scale(%d,%d,%d) = %d, want %d", dv, de, dr, got, want)
		}
	}
}

func TestParseGroupRead(t *testing.T) {
	buf := make([]byte, 24+2*16)
	put := func(i int, v uint64) { binary.NativeEndian.PutUint64(buf[8*i:], v) }
	put(0, 2)
	put(1, 1000)
	put(2, 500)
	put(3, 11)
	put(4, 101)
	put(5, 22)
	put(6, 102)
	var r collect.GroupRead
	if err := collect.ParseGroupRead(buf, &r); err != nil {
		t.Fatal(err)
	}
	if r.Enabled != 1000 || r.Running != 500 || !slices.Equal(r.Values, []uint64{11, 22}) || !slices.Equal(r.IDs, []uint64{101, 102}) {
		t.Errorf("got %+v", r)
	}
	if err := collect.ParseGroupRead(buf[:40], &r); err == nil {
		t.Error("a short buffer must be an error")
	}
	put(0, 1000)
	if err := collect.ParseGroupRead(buf, &r); err == nil {
		t.Error("an absurd member count must be an error")
	}
}

func TestConfigValidate(t *testing.T) {
	ev := func(name string, sample bool) collect.Event { return collect.Event{Name: name, Sample: sample} }
	tests := []struct {
		name string
		cfg  collect.Config
		ok   bool
	}{
		{"good", collect.Config{Interval: 100 * time.Millisecond, Events: []collect.Event{ev("a", true)}, SamplePeriod: 1000}, true},
		{"no events", collect.Config{Interval: time.Second}, false},
		{"tiny interval", collect.Config{Interval: time.Microsecond, Events: []collect.Event{ev("a", false)}}, false},
		{"duplicate", collect.Config{Interval: time.Second, Events: []collect.Event{ev("a", false), ev("a", false)}}, false},
		{"sampled without period", collect.Config{Interval: time.Second, Events: []collect.Event{ev("a", true)}}, false},
		{"ring not power of two", collect.Config{Interval: time.Second, Events: []collect.Event{ev("a", false)}, RingPages: 3}, false},
		{"too many", collect.Config{Interval: time.Second, Events: []collect.Event{ev("1", false), ev("2", false), ev("3", false), ev("4", false), ev("5", false), ev("6", false), ev("7", false), ev("8", false), ev("9", false)}}, false},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

type recorder struct {
	items   []string
	times   []int64
	targets []uint64
}

func (r *recorder) Reading(x *collect.Reading) {
	r.items = append(r.items, "R:"+x.Stream.String())
	r.times = append(r.times, x.Time)
}
func (r *recorder) Sample(x *collect.Sample) {
	r.items = append(r.items, "S:"+x.Stream.String())
	r.times = append(r.times, x.Time)
}
func (r *recorder) BranchTargets(_ collect.StreamID, t []uint64) { r.targets = append(r.targets, t...) }

func TestBuffersMergeAndOrder(t *testing.T) {
	b := collect.NewBuffers(collect.BufferLimits{})
	a := collect.StreamID{Namespace: "ns", VMI: "a", VCPU: 0}
	z := collect.StreamID{Namespace: "ns", VMI: "z", VCPU: 1}
	b.Reading(&collect.Reading{Stream: z, Time: 100})
	b.Sample(&collect.Sample{Stream: a, Time: 50})
	b.Reading(&collect.Reading{Stream: a, Time: 100})
	b.Sample(&collect.Sample{Stream: a, Time: 100}) // at the reading's end: before it
	b.Sample(&collect.Sample{Stream: a, Time: 150})
	b.Reading(&collect.Reading{Stream: a, Time: 200})
	b.Branches(a, 150, []collect.Branch{{From: 1, To: 0xabc}})
	var r recorder
	b.Drain(&r)
	want := []string{"S:ns/a/vcpu0", "S:ns/a/vcpu0", "R:ns/a/vcpu0", "S:ns/a/vcpu0", "R:ns/a/vcpu0", "R:ns/z/vcpu1"}
	if !slices.Equal(r.items, want) {
		t.Fatalf("drained %v, want %v", r.items, want)
	}
	if !slices.Equal(r.times, []int64{50, 100, 100, 150, 200, 100}) {
		t.Errorf("times %v", r.times)
	}
	if !slices.Equal(r.targets, []uint64{0xabc}) {
		t.Errorf("branch targets %v", r.targets)
	}
	var again recorder
	b.Drain(&again)
	if len(again.items) != 0 {
		t.Errorf("second drain got %v, want nothing", again.items)
	}
}

func TestBuffersBounded(t *testing.T) {
	b := collect.NewBuffers(collect.BufferLimits{Readings: 4, Samples: 10})
	s := collect.StreamID{Namespace: "ns", VMI: "v"}
	for i := range 100 {
		b.Sample(&collect.Sample{Stream: s, Time: int64(i)})
	}
	for i := range 7 {
		b.Reading(&collect.Reading{Stream: s, Time: int64(1000 + i)})
	}
	st := b.Stats()
	if st.DroppedSamples != 90 || st.DroppedReadings != 3 || st.Samples != 100 {
		t.Fatalf("stats %+v, want 90 samples and 3 readings dropped", st)
	}
	select {
	case <-b.Pressure():
	default:
		t.Error("no pressure signal when a stream's samples passed half its bound")
	}
	var r recorder
	b.Drain(&r)
	// The newest survive, in order.
	wantTimes := []int64{90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 1003, 1004, 1005, 1006}
	if !slices.Equal(r.times, wantTimes) {
		t.Errorf("kept %v, want %v", r.times, wantTimes)
	}
	b.Lost(s, 5)
	if b.Stats().Lost != 5 {
		t.Errorf("lost = %d", b.Stats().Lost)
	}
	b.Forget(s)
	if b.Stats().Streams != 0 {
		t.Errorf("Forget left %d streams", b.Stats().Streams)
	}
}

type discard struct{}

func (discard) Reading(*collect.Reading)                 {}
func (discard) Sample(*collect.Sample)                   {}
func (discard) BranchTargets(collect.StreamID, []uint64) {}

// Steady state (buffers grown, scratch grown) allocates nothing.
func TestBuffersAllocs(t *testing.T) {
	b := collect.NewBuffers(collect.BufferLimits{})
	s := collect.StreamID{Namespace: "ns", VMI: "v"}
	r := &collect.Reading{Stream: s}
	sm := &collect.Sample{Stream: s}
	round := func() {
		for i := range 50 {
			sm.Time = int64(i)
			b.Sample(sm)
		}
		b.Reading(r)
		b.Drain(discard{})
	}
	round()
	if n := testing.AllocsPerRun(100, round); n != 0 {
		t.Errorf("allocations per round = %v, want 0", n)
	}
}

func TestRegistry(t *testing.T) {
	collect.Register("test-registry", func(collect.Options) (collect.Collector, error) { return nil, errors.New("made") })
	if _, err := collect.New("test-registry", collect.Options{}); err == nil || err.Error() != "made" {
		t.Errorf("New = %v", err)
	}
	if _, err := collect.New("nope", collect.Options{}); err == nil {
		t.Error("an unknown collector must be an error")
	}
	defer func() {
		if recover() == nil {
			t.Error("registering a name twice must panic")
		}
	}()
	collect.Register("test-registry", nil)
}
