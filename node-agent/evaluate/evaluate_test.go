package evaluate

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/tracegen"
)

// TestQuickGrid runs the quick grid (every family, few variants) and holds
// the engine to the accuracy bars on it.
func TestQuickGrid(t *testing.T) {
	if testing.Short() {
		t.Skip("generates and analyses several hundred megabytes of trace")
	}
	start := time.Now()
	results := Run(context.Background(), tracegen.Grid(tracegen.Quick, 7), detect.DefaultConfig(), 2, func(r Result) {
		t.Logf("%-40s detected=%v latency=%.1fs false=%d rows=%d %v err=%v", r.Scenario, r.Detected, float64(r.LatencyNS)/1e9, len(r.False), r.Rows, r.Elapsed.Round(time.Millisecond), r.Err)
		for _, f := range r.False {
			t.Logf("    false: %+v", f)
		}
	})
	t.Log("\n" + Render(results, "go test ./node-agent/evaluate", detect.DefaultConfig().CacheOscillation.Window.Nanoseconds(), time.Since(start)))
	attacks, benign := Summarise(results)
	window := detect.DefaultConfig().CacheOscillation.Window.Seconds()
	var lat []float64
	for _, s := range attacks {
		if strings.HasPrefix(s.Family, "sparse-") {
			continue
		}
		if s.Detected != s.Scenarios {
			t.Errorf("%s: %d of %d attacks detected, want all: %v", s.Family, s.Detected, s.Scenarios, s.Failures)
		}
		if s.False > 0 {
			t.Errorf("%s: %d spurious findings: %v", s.Family, s.False, s.Failures)
		}
		lat = append(lat, s.Latencies...)
	}
	if benign.False > 0 {
		t.Errorf("benign nodes: %d false findings: %v", benign.False, benign.Failures)
	}
	if p50 := percentile(lat, 0.5); p50 >= 3*window {
		t.Errorf("median latency %.1fs, want under 3 windows (%.0fs)", p50, 3*window)
	}
	for _, r := range results {
		if r.Err != nil {
			t.Errorf("%s: %v", r.Scenario, r.Err)
		}
	}
}
