package evidence_test

import (
	"testing"

	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/internal/evidence/evidencetest"
)

var sink []byte

// BenchmarkEncode measures what the agent pays per snapshot: a realistic
// four-second capture (fits as is after the first sample cut) and one far
// over the limit (a minute of 32 series, 60000 samples: every trimming
// attempt encodes and compresses again).
func BenchmarkEncode(b *testing.B) {
	for _, bc := range []struct {
		name string
		s    *evidence.Snapshot
	}{
		{"covert-channel", evidencetest.CovertChannel(1).Snapshot},
		{"prime-probe", evidencetest.PrimeProbe(1).Snapshot},
		{"huge", evidencetest.Huge(1).Snapshot},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			var n int
			for b.Loop() {
				data, _, err := evidence.Encode(bc.s)
				if err != nil {
					b.Fatal(err)
				}
				sink, n = data, len(data)
			}
			b.ReportMetric(float64(n), "bytes/snapshot")
		})
	}
}

// BenchmarkDecode measures reading a snapshot back (sidewatch report, the
// operator).
func BenchmarkDecode(b *testing.B) {
	data, _, err := evidence.Encode(evidencetest.CovertChannel(1).Snapshot)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := evidence.Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
