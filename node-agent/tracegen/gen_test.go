package tracegen

import (
	"bytes"
	"io"
	"math"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/node-agent/trace"
)

func TestGenerateIsValidAndDeterministic(t *testing.T) {
	sc := Scenario{Name: "t", Seed: 3, Duration: 20 * time.Second, SamplePeriod: 10000, LockSamplePeriod: 1000,
		VMIs:   []VMI{{Namespace: "a", Name: "db", VCPUs: 2, Kind: Database}, {Namespace: "b", Name: "sl", VCPUs: 1, Kind: SplitLocker}},
		Attack: &Attack{Kind: BusLockCovert, Period: 50 * time.Millisecond, Coding: RZ, Duty: 0.5, Rate: 5e5, Onset: 5 * time.Second, Protect: "receiver"}}
	var a, b bytes.Buffer
	truth, err := Generate(&a, sc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(&b, sc); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("the same scenario generated twice differs")
	}
	if truth.Victim != "tenant-z/spy-sink" || len(truth.Protected) != 1 || truth.OnsetNS != 5e9 || truth.Type != "BusLockCovertChannel" {
		t.Errorf("truth: %+v", truth)
	}
	r := trace.NewReader(&a)
	var st trace.StreamTable
	var md trace.Metadata
	var locks, lockSamples, misses, missSamples float64
	sawTruth := false
	for {
		k, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("generated trace does not parse: %v", err)
		}
		if k == trace.KindMeta {
			key, val := r.Meta()
			if string(key) == TruthKey {
				if got, err := ParseTruth(val); err != nil || got.Scenario != "t" {
					t.Errorf("truth line: %+v %v", got, err)
				}
				sawTruth = true
			}
			if err := md.Apply(key, val); err != nil {
				t.Fatal(err)
			}
			continue
		}
		row := r.Row()
		if _, _, err := st.Intern(row, r.Line()); err != nil {
			t.Fatal(err)
		}
		if string(row.VMI) != "exfil-src" {
			continue
		}
		switch row.Event {
		case trace.BusLocks:
			locks += float64(row.Value)
		case trace.BusLocks.Sample():
			lockSamples++
		case trace.LLCMisses:
			misses += float64(row.Value)
		case trace.LLCMisses.Sample():
			missSamples++
		}
	}
	if !sawTruth || md.Interval != 100*time.Millisecond || md.SamplePeriod[trace.BusLocks] != 1000 {
		t.Errorf("metadata: truth=%v %+v", sawTruth, md)
	}
	// Overflow sampling: one sample per period events, give or take the
	// jitter of the period and the events of the last partial interval.
	if got, want := lockSamples, locks/1000; math.Abs(got-want) > 0.05*want+5 {
		t.Errorf("lock samples: got %v, want about %v", got, want)
	}
	if got, want := missSamples, misses/10000; math.Abs(got-want) > 0.05*want+5 {
		t.Errorf("LLC-miss samples: got %v, want about %v", got, want)
	}
}

func TestGridNamesAreUnique(t *testing.T) {
	for _, s := range []Scale{Quick, Full} {
		seen := map[string]bool{}
		for _, sc := range Grid(s, 7) {
			if seen[sc.Name] {
				t.Errorf("%s: duplicate scenario %s", s, sc.Name)
			}
			seen[sc.Name] = true
			if sc.Attack != nil && sc.Attack.Onset >= sc.Duration {
				t.Errorf("%s: onset %v after the end %v", sc.Name, sc.Attack.Onset, sc.Duration)
			}
		}
	}
}
