package evaluate

import (
	"context"
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
}
