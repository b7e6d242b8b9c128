package evaluate

import (
	"os"
	"testing"

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
