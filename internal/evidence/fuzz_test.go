package evidence_test

import (
	"encoding/json"
	"testing"

	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/internal/evidence/evidencetest"
)

// smallSnapshot is a scenario cut down to a few entries of every list, a
// seed the fuzzer can mutate quickly.
func smallSnapshot(sc *evidencetest.Scenario) *evidence.Snapshot {
	s := sc.Snapshot
	for i := range s.Series {
		s.Series[i].Values = s.Series[i].Values[1990:2010]
	}
	if a := s.Detector.Autocorrelation; a != nil {
		a.Values = a.Values[:30]
	}
	for i := range s.Detector.Bursts {
		s.Detector.Bursts[i].TimesNs = s.Detector.Bursts[i].TimesNs[:3]
		s.Detector.Bursts[i].PeriodsNs = s.Detector.Bursts[i].PeriodsNs[:2]
	}
	for i := range s.Detector.PhaseCorrelation {
		c := &s.Detector.PhaseCorrelation[i]
		c.Phases, c.Anomalies = c.Phases[:2], c.Anomalies[:min(2, len(c.Anomalies))]
	}
	s.Samples = s.Samples[:4]
	s.Attribution = nil
	for i := range s.Processes {
		s.Processes[i].Processes = s.Processes[i].Processes[:3]
	}
	for i := range s.CoScheduling {
		o := s.CoScheduling[i].Overlap
		o.SMTSibling, o.SharedLLC = o.SMTSibling[:3], o.SharedLLC[:3]
	}
	return s
}

// checkDecoded holds for anything Decode accepts: it is valid, and the
// agent's encoder stores it again and reads it back.
func checkDecoded(t *testing.T, s *evidence.Snapshot) {
	if err := s.Validate(); err != nil {
		t.Fatalf("Decode accepted an invalid snapshot: %v", err)
	}
	data, stored, err := evidence.Encode(s)
	if err != nil {
		t.Fatalf("Encode refused a decoded snapshot: %v", err)
	}
	if _, err := evidence.Decode(data); err != nil {
		t.Fatalf("Decode refused what Encode wrote: %v", err)
	}
	_ = stored.TrimmedSummary()
}

// FuzzDecode feeds Decode arbitrary bytes, as a compromised agent could
// store them in an evidence ConfigMap.
func FuzzDecode(f *testing.F) {
	for _, sc := range []*evidencetest.Scenario{evidencetest.CovertChannel(1), evidencetest.PrimeProbe(1), evidencetest.BusLock(1)} {
		data, _, err := evidence.Encode(smallSnapshot(sc))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := evidence.Decode(data)
		if err != nil {
			return
		}
		checkDecoded(t, s)
	})
}

// FuzzDecodeJSON mutates the JSON inside the gzip stream, where the
// fuzzer's changes reach the parser and the validation.
func FuzzDecodeJSON(f *testing.F) {
	for _, sc := range []*evidencetest.Scenario{evidencetest.CovertChannel(1), evidencetest.PrimeProbe(1), evidencetest.BusLock(1)} {
		_, stored, err := evidence.Encode(smallSnapshot(sc))
		if err != nil {
			f.Fatal(err)
		}
		js, err := json.Marshal(stored)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(js)
	}
	f.Add([]byte(`{"format":"sidewatch.io/evidence-snapshot","version":1,"series":[{"stepNs":1,"startNs":-86400000000000,"values":[1e308,1e308]}]}`))
	f.Add([]byte(`{"format":"sidewatch.io/evidence-snapshot","version":1,"samples":[{"rip":"0xffffffffffffffff","vcpu":4095,"pid":4194304}]}`))
	f.Fuzz(func(t *testing.T, js []byte) {
		s, err := evidence.DecodeJSON(js)
		if err != nil {
			return
		}
		checkDecoded(t, s)
	})
}
