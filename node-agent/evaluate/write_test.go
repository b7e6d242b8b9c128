package evaluate

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/sidewatch/sidewatch/node-agent/detect"

	"github.com/sidewatch/sidewatch/node-agent/tracegen"
)

// TestWriteScenario writes the quick-grid scenario $SIDEWATCH_SCENARIO to
// $SIDEWATCH_SCENARIO_OUT, for debugging with sidewatch analyze.
func TestWriteScenario(t *testing.T) {
	name := os.Getenv("SIDEWATCH_SCENARIO")
	if name == "" {
		t.Skip("set SIDEWATCH_SCENARIO and SIDEWATCH_SCENARIO_OUT")
	}
	scale := tracegen.Quick
	if os.Getenv("SIDEWATCH_SCALE") == "full" {
		scale = tracegen.Full
	}
	for _, sc := range tracegen.Grid(scale, 7) {
		if sc.Name != name {
			continue
		}
		f, err := os.Create(os.Getenv("SIDEWATCH_SCENARIO_OUT"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := tracegen.Generate(f, sc); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("no scenario %q", name)
}

// TestRunNamed evaluates the full-grid scenarios named in
// $SIDEWATCH_SCENARIOS (comma-separated), for debugging.
func TestRunNamed(t *testing.T) {
	names := os.Getenv("SIDEWATCH_SCENARIOS")
	if names == "" {
		t.Skip("set SIDEWATCH_SCENARIOS")
	}
	want := map[string]bool{}
	for _, n := range strings.Split(names, ",") {
		want[n] = true
	}
	var scs []tracegen.Scenario
	for _, sc := range tracegen.Grid(tracegen.Full, 7) {
		if want[sc.Name] || want[strings.SplitN(sc.Name, "/", 2)[0]] {
			scs = append(scs, sc)
		}
	}
	Run(context.Background(), scs, detect.DefaultConfig(), 2, func(r Result) {
		t.Logf("%-40s detected=%v latency=%.1fs false=%d incomplete=%d protected=%v", r.Scenario, r.Detected, float64(r.LatencyNS)/1e9, len(r.False), len(r.Incomplete), r.Truth.Protected)
		for _, f := range append(r.False, r.Incomplete...) {
			t.Logf("    %+v", f)
		}
	})
}
