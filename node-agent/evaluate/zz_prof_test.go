package evaluate

import (
	"context"
	"os"
	"regexp"
	"testing"

	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/tracegen"
)

func TestZZProf(t *testing.T) {
	re := regexp.MustCompile(os.Getenv("ZZ_ONLY"))
	var scs []tracegen.Scenario
	for _, s := range tracegen.Grid(tracegen.Full, 7) {
		if re.MatchString(s.Name) {
			scs = append(scs, s)
		}
	}
	for _, r := range Run(context.Background(), scs, detect.DefaultConfig(), 1, nil) {
		t.Logf("%s detected=%v false=%d rows=%d vmih=%.2f el=%v", r.Scenario, r.Detected, len(r.False), r.Rows, r.VMIHours, r.Elapsed)
	}
}
