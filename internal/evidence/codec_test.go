package evidence_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/internal/evidence/evidencetest"
)

var scenarios = []struct {
	name string
	make func(seed uint64) *evidencetest.Scenario
}{
	{"covert channel", evidencetest.CovertChannel},
	{"prime+probe", evidencetest.PrimeProbe},
	{"bus lock", evidencetest.BusLock},
}

func TestRoundTrip(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			s := sc.make(1).Snapshot
			samplesBefore := len(s.Samples)
			data, stored, err := evidence.Encode(s)
			if err != nil {
				t.Fatal(err)
			}
			if len(data) > evidence.MaxCompressedBytes {
				t.Errorf("encoded %d bytes, the limit is %d", len(data), evidence.MaxCompressedBytes)
			}
			if len(s.Samples) != samplesBefore {
				t.Errorf("Encode changed its input: %d samples, had %d", len(s.Samples), samplesBefore)
			}
			got, err := evidence.Decode(data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, stored) {
				a, _ := json.Marshal(got)
				b, _ := json.Marshal(stored)
				t.Fatalf("decoded snapshot differs from the stored one:\n got %.400s\nwant %.400s", a, b)
			}
			if got.Format != evidence.Format || got.Version != evidence.Version {
				t.Errorf("format %q version %d", got.Format, got.Version)
			}
			// A realistic snapshot of a few seconds fits untrimmed, except
			// for the samples beyond the first stage's 4096.
			for _, n := range got.Trimmed {
				if n.Stage != "samples" {
					t.Errorf("trimmed %s: %s", n.Stage, n.Detail)
				}
			}
			if len(got.Attribution) == 0 {
				t.Error("no attribution computed from the samples")
			}
			// The content survived: the series of every VMI, the detector
			// figures, processes and co-scheduling.
			if len(got.Series) < 2*len(got.VMIs)-2 || len(got.Processes) != len(got.VMIs) || len(got.CoScheduling) == 0 {
				t.Errorf("%d series, %d process lists, %d co-scheduling pairs for %d VMIs", len(got.Series), len(got.Processes), len(got.CoScheduling), len(got.VMIs))
			}
			again, _, err := evidence.Encode(s)
			if err != nil || !bytes.Equal(again, data) {
				t.Error("encoding the same snapshot twice gave different bytes")
			}
		})
	}
}

// TestScenarioFigures checks the synthetic scenarios carry the signal they
// model, so the plots and tests built on them show real attacks.
func TestScenarioFigures(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		cc := evidencetest.CovertChannel(seed).Snapshot.Detector.Autocorrelation
		if cc.PeakLagNs != int64(20*time.Millisecond) || cc.PeakValue < cc.Threshold {
			t.Errorf("covert channel, seed %d: autocorrelation peak %.2f at %s, want above %.2f at 20ms", seed, cc.PeakValue, time.Duration(cc.PeakLagNs), cc.Threshold)
		}
	}
	pp := evidencetest.PrimeProbe(7).Snapshot.Detector.PhaseCorrelation
	if pp[0].Coefficient < 0.8 || math.Abs(pp[1].Coefficient) > 0.2 {
		t.Errorf("prime+probe: attacker correlation %.2f (want > 0.8), bystander %.2f (want about 0)", pp[0].Coefficient, pp[1].Coefficient)
	}
	bl := evidencetest.BusLock(7).Snapshot.Detector.Bursts[0]
	if bl.MeanPeriodNs < int64(25*time.Millisecond) || bl.MeanPeriodNs > int64(40*time.Millisecond) {
		t.Errorf("bus lock: mean burst period %s, want 25ms to 40ms (some periods carry a 0)", time.Duration(bl.MeanPeriodNs))
	}
}

func stagesOf(s *evidence.Snapshot) []string {
	var out []string
	for _, n := range s.Trimmed {
		if len(out) == 0 || out[len(out)-1] != n.Stage {
			out = append(out, n.Stage)
		}
	}
	return out
}

func noteFor(s *evidence.Snapshot, stage string) string {
	for _, n := range s.Trimmed {
		if n.Stage == stage {
			return n.Detail
		}
	}
	return ""
}

// TestTrimHuge stores a snapshot far over the limit: a minute of 32 series
// at 1 ms, 60000 samples and 3000 processes per VMI.
func TestTrimHuge(t *testing.T) {
	s := evidencetest.Huge(1).Snapshot
	data, stored, err := evidence.Encode(s)
	if err != nil {
		t.Fatalf("a snapshot far over the limit was rejected: %v", err)
	}
	if len(data) > evidence.MaxCompressedBytes {
		t.Fatalf("encoded %d bytes, the limit is %d", len(data), evidence.MaxCompressedBytes)
	}
	got, err := evidence.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"samples", "series-window"}; !reflect.DeepEqual(stagesOf(got)[:2], want) {
		t.Errorf("trimming stages %v, want to start with %v", stagesOf(got), want)
	}
	if n := noteFor(got, "samples"); !strings.Contains(n, "of 60000 address samples") || !strings.Contains(n, "the attribution still counts all 60000") {
		t.Errorf("samples note %q", n)
	}
	if n := noteFor(got, "series-window"); !strings.Contains(n, "(they covered -30s..+30s)") {
		t.Errorf("series-window note %q", n)
	}
	if !strings.Contains(stored.TrimmedSummary(), "samples: kept") {
		t.Errorf("summary %q", stored.TrimmedSummary())
	}
	// The attribution counts every sample, not only those kept.
	var total int64
	for _, a := range got.Attribution {
		total += a.Unattributed
		for _, p := range a.Programs {
			total += p.Samples
		}
	}
	if total != 60000 {
		t.Errorf("attribution counts %d samples, want 60000", total)
	}
	// What is kept is around the onset, at full resolution.
	for _, se := range got.Series {
		if se.StartNs > 0 || se.End() < 0 || se.StepNs != int64(time.Millisecond) {
			t.Errorf("series %s %s covers %d..%d step %d, want the onset at 1ms", se.VMI, se.Event, se.StartNs, se.End(), se.StepNs)
		}
	}
	if len(s.Series[0].Values) != 60000 || len(s.Samples) != 60000 {
		t.Error("Encode trimmed its input instead of a copy")
	}
}

func randomString(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.IntN(0x5e) + 0x21) // printable, incompressible enough
	}
	return string(b)
}

// TestTrimAdversarial fills every list to its cap with incompressible data
// and breaks every number it can: Encode must still store something, fix
// what it cannot hold and say so.
func TestTrimAdversarial(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	s := &evidence.Snapshot{CapturedAt: time.Unix(1e9, 0).UTC(), Onset: time.Unix(1e9, 0).UTC()}
	s.Finding = evidence.FindingRef{Namespace: "ns", Name: strings.Repeat("n", 400), Score: math.NaN()}
	for i := 0; i < 40; i++ {
		s.VMIs = append(s.VMIs, evidence.VMI{Namespace: randomString(r, 300), Name: randomString(r, 300), Role: "Unknown", HostCPUs: make([]int32, 2000)})
	}
	for i := 0; i < 40; i++ {
		s.Host.UnavailableSignals = append(s.Host.UnavailableSignals, randomString(r, 2000))
	}
	for i := 0; i < 300; i++ {
		v := make([]float64, 70000)
		for j := range v {
			v[j] = r.Float64() * 1e9
		}
		v[5] = math.Inf(1)
		s.Series = append(s.Series, evidence.Series{VMI: randomString(r, 50), Event: "LLC Misses!", StepNs: 0, Values: v})
	}
	s.Detector.Figures = map[string]float64{}
	for i := 0; i < 100; i++ {
		s.Detector.Figures[randomString(r, 80)] = r.Float64()
	}
	for i := 0; i < 80; i++ {
		s.Detector.EventRates = append(s.Detector.EventRates, v1alpha1.EventRate{VMI: randomString(r, 2000), Event: "llc_misses", PerSecond: 1})
	}
	for i := 0; i < 70000; i++ {
		path := randomString(r, 200)
		if i%1000 == 0 {
			path = randomString(r, 5000)
		}
		s.Samples = append(s.Samples, evidence.Sample{VMI: "a/b", TNs: int64(r.Uint64()), PID: -5, Comm: randomString(r, 100), Path: path, RIP: evidence.Hex(r.Uint64())})
	}
	data, stored, err := evidence.Encode(s)
	if err != nil {
		t.Fatalf("Encode refused an adversarial snapshot: %v", err)
	}
	if len(data) > evidence.MaxCompressedBytes {
		t.Fatalf("encoded %d bytes, the limit is %d", len(data), evidence.MaxCompressedBytes)
	}
	got, err := evidence.Decode(data)
	if err != nil {
		t.Fatalf("Decode refused what Encode wrote: %v", err)
	}
	if !reflect.DeepEqual(got, stored) {
		t.Error("decoded snapshot differs from the stored one")
	}
	for _, want := range []string{"cut ", "capped lists", "non-finite", "event names", "clamped"} {
		found := false
		for _, n := range got.Trimmed {
			found = found || n.Stage == "limits" && strings.Contains(n.Detail, want)
		}
		if !found {
			t.Errorf("no limits note about %q in %v", want, got.Trimmed)
		}
	}
	if st := stagesOf(got); len(st) < 3 {
		t.Errorf("stages %v, want limits and at least two trimming stages", st)
	}
}

// TestTrimStopsEarly checks trimming goes no further than needed.
func TestTrimStopsEarly(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	base := func() *evidence.Snapshot {
		s := evidencetest.PrimeProbe(2).Snapshot
		s.Samples = s.Samples[:100]
		s.Attribution = nil
		return s
	}
	for _, tc := range []struct {
		name   string
		grow   func(s *evidence.Snapshot)
		stages []string
	}{
		{"fits", func(*evidence.Snapshot) {}, nil},
		{"many incompressible samples", func(s *evidence.Snapshot) {
			for i := 0; i < 20000; i++ {
				s.Samples = append(s.Samples, evidence.Sample{VMI: "batch/render-farm-7", TNs: int64(i) * 1000, Path: randomString(r, 60), Comm: "spy"})
			}
		}, []string{"samples"}},
		{"a long noisy series", func(s *evidence.Snapshot) {
			v := make([]float64, 65536)
			for i := range v {
				v[i] = float64(r.Uint64N(1 << 40))
			}
			s.Series = append(s.Series, evidence.Series{VMI: "batch/render-farm-7", Event: "cycles", StartNs: -int64(30 * time.Second), StepNs: int64(time.Millisecond), Values: v})
		}, []string{"series-window"}},
		{"huge process lists", func(s *evidence.Snapshot) {
			for i := range s.Processes {
				for p := int32(5000); p < 8000; p++ {
					s.Processes[i].Processes = append(s.Processes[i].Processes, evidence.Process{PID: p, Comm: randomString(r, 15), Exe: randomString(r, 40), Libraries: []string{randomString(r, 40)}})
				}
			}
		}, []string{"series-window", "processes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := base()
			tc.grow(s)
			data, _, err := evidence.Encode(s)
			if err != nil {
				t.Fatal(err)
			}
			got, err := evidence.Decode(data)
			if err != nil {
				t.Fatal(err)
			}
			if st := stagesOf(got); !reflect.DeepEqual(st, tc.stages) {
				t.Errorf("stages %v, want %v (%v)", st, tc.stages, got.Trimmed)
			}
		})
	}
}

func gz(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func TestDecodeRejects(t *testing.T) {
	valid := func(edit func(m map[string]any)) []byte {
		t.Helper()
		_, stored, err := evidence.Encode(evidencetest.BusLock(1).Snapshot)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := json.Marshal(stored)
		var m map[string]any
		json.Unmarshal(js, &m)
		edit(m)
		js, _ = json.Marshal(m)
		return gz(t, js)
	}
	series0 := func(m map[string]any) map[string]any { return m["series"].([]any)[0].(map[string]any) }
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"not gzip", []byte(`{"format":"sidewatch.io/evidence-snapshot"}`), "not a gzip stream"},
		{"too large compressed", make([]byte, evidence.MaxCompressedBytes+1), "snapshot too large"},
		{"gzip bomb", gz(t, bytes.Repeat([]byte(" "), evidence.MaxJSONBytes+10)), "more than 8388608 bytes once decompressed"},
		{"not JSON", gz(t, []byte("hello")), "not a snapshot"},
		{"other format", gz(t, []byte(`{"format":"stix","version":1}`)), `format is "stix"`},
		{"newer version", valid(func(m map[string]any) { m["version"] = 2 }), "version 2 is newer than this sidewatch reads (1): upgrade sidewatch"},
		{"version 0", valid(func(m map[string]any) { m["version"] = 0 }), "field version is 0"},
		{"zero step", valid(func(m map[string]any) { series0(m)["stepNs"] = 0 }), "series[0].stepNs is 0"},
		{"offset beyond a day", valid(func(m map[string]any) { series0(m)["startNs"] = 9e13 }), "series[0].startNs is 90000000000000 ns from the onset"},
		{"bad event", valid(func(m map[string]any) { series0(m)["event"] = "<script>" }), `series[0].event "<script>" is not an event name`},
		{"long comm", valid(func(m map[string]any) {
			m["samples"].([]any)[3].(map[string]any)["comm"] = strings.Repeat("x", 65)
		}), "samples[3].comm is 65 bytes long, the limit is 64"},
		{"bad rip", valid(func(m map[string]any) { m["samples"].([]any)[0].(map[string]any)["rip"] = "12" }), `address "12"`},
		{"negative burst period", valid(func(m map[string]any) {
			m["detector"].(map[string]any)["bursts"].([]any)[0].(map[string]any)["periodsNs"] = []any{-1}
		}), "detector.bursts[0].periodsNs[0] is -1"},
		{"fraction above 1", valid(func(m map[string]any) {
			o := m["coScheduling"].([]any)[0].(map[string]any)["overlap"].(map[string]any)
			o["smtSibling"].([]any)[2] = 1.5
		}), "coScheduling[0].overlap.smtSibling[2] is 1.5, want a fraction 0..1"},
		{"too many series", valid(func(m map[string]any) {
			s := m["series"].([]any)
			for len(s) <= 256 {
				s = append(s, s[0])
			}
			m["series"] = s
		}), "series has 257 entries, the limit is 256"},
		{"trailing garbage", append(valid(func(map[string]any) {}), 0x1f, 0x8b, 0, 0), "evidence:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := evidence.Decode(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestHexJSON(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    evidence.Hex
		wantErr bool
	}{
		{`"0x0"`, 0, false},
		{`"0xffffffff81000000"`, 0xffffffff81000000, false},
		{`"0x1ffffffffffffffff"`, 0, true}, // 17 digits
		{`"ff"`, 0, true},
		{`"0x"`, 0, true},
		{`"0xg"`, 0, true},
		{`12`, 0, true},
	} {
		var h evidence.Hex
		err := json.Unmarshal([]byte(tc.in), &h)
		if (err != nil) != tc.wantErr || err == nil && h != tc.want {
			t.Errorf("%s: got %v, %v; want %v, error %v", tc.in, h, err, tc.want, tc.wantErr)
		}
		if err == nil {
			back, _ := json.Marshal(h)
			if string(back) != tc.in {
				t.Errorf("%s: marshals back as %s", tc.in, back)
			}
		}
	}
}

func TestParseFile(t *testing.T) {
	data, stored, err := evidence.Encode(evidencetest.BusLock(1).Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(stored)
	cm := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x-evidence\n  namespace: payments\nbinaryData:\n  %s: %s\n", evidence.DataKey, mustBase64(data))
	for _, tc := range []struct {
		name string
		in   []byte
		want string // error, or "" for success
	}{
		{"gzip", data, ""},
		{"json", js, ""},
		{"configmap yaml", []byte(cm), ""},
		{"a finding", []byte("apiVersion: sidewatch.io/v1alpha1\nkind: ThreatFinding\n"), "holds a ThreatFinding, want the evidence ConfigMap"},
		{"configmap without snapshot", []byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"), "has no binaryData key snapshot.json.gz"},
		{"other json", []byte(`{"a":1}`), "not a snapshot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := evidence.ParseFile(tc.in)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(s, stored) {
					t.Error("parsed snapshot differs from the stored one")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func mustBase64(b []byte) string {
	js, _ := json.Marshal(b) // []byte marshals as base64
	return strings.Trim(string(js), `"`)
}

func TestIntervalsFromTrain(t *testing.T) {
	for _, tc := range []struct {
		in   []float32
		want []evidence.Interval
	}{
		{nil, nil},
		{[]float32{0, 0}, nil},
		{[]float32{1, 1, 0, 1}, []evidence.Interval{{StartNs: -100, EndNs: 100}, {StartNs: 200, EndNs: 300}}},
		{[]float32{0, 3.5, 0.99}, []evidence.Interval{{StartNs: 0, EndNs: 100}}},
	} {
		got := evidence.IntervalsFromTrain(-100, 100, tc.in, 1)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%v: got %v, want %v", tc.in, got, tc.want)
		}
	}
}
