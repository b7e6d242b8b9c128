package probe

import (
	"testing"
)

func TestRunPrints(t *testing.T) {
	for _, r := range Run() {
		t.Logf("%-36s available=%v absent=%v %s", r.Name, r.Available(), r.Absent(), r.Reason())
	}
}
