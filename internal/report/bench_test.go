package report_test

import (
	"io"
	"testing"

	"github.com/sidewatch/sidewatch/internal/evidence/evidencetest"
	"github.com/sidewatch/sidewatch/internal/report"
)

// BenchmarkReport measures building and rendering the covert-channel
// report as Markdown and as HTML.
func BenchmarkReport(b *testing.B) {
	sc := evidencetest.CovertChannel(1)
	s := stored(b, sc)
	b.ReportAllocs()
	for b.Loop() {
		r := report.Build(report.Input{Finding: sc.Finding, Snapshot: s, Events: sc.Events, GeneratedAt: generated})
		if err := r.Markdown(io.Discard); err != nil {
			b.Fatal(err)
		}
		if err := r.HTML(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
