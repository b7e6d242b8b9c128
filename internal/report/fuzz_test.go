package report_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/internal/evidence/evidencetest"
	"github.com/sidewatch/sidewatch/internal/report"
)

// FuzzRender renders reports from snapshots the decoder accepts: a
// compromised agent chooses every number and string in them, and the
// report must neither panic nor let markup through.
func FuzzRender(f *testing.F) {
	for _, sc := range []*evidencetest.Scenario{evidencetest.CovertChannel(1), evidencetest.PrimeProbe(1), evidencetest.BusLock(1)} {
		s := sc.Snapshot
		for i := range s.Series {
			s.Series[i].Values = s.Series[i].Values[1990:2030]
		}
		if a := s.Detector.Autocorrelation; a != nil {
			a.Values = a.Values[:40]
		}
		s.Samples = s.Samples[:5]
		js, err := json.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(js)
	}
	finding := evidencetest.PrimeProbe(1)
	f.Fuzz(func(t *testing.T, js []byte) {
		s, err := evidence.DecodeJSON(js)
		if err != nil {
			return
		}
		r := report.Build(report.Input{Finding: finding.Finding, Snapshot: s, Events: finding.Events, GeneratedAt: generated})
		var md, html bytes.Buffer
		if err := r.Markdown(&md); err != nil {
			t.Fatal(err)
		}
		if err := r.HTML(&html); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.ToLower(html.String()), "<script") {
			t.Fatal("markup from the snapshot reached the HTML")
		}
	})
}
