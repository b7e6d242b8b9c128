package detect

import (
	"strings"
	"testing"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

func TestColocationWeight(t *testing.T) {
	const window = int64(20e9) // 20 s
	tests := []struct {
		name    string
		typ     v1alpha1.ThreatType
		c       Colocation
		want    float64
		because string
	}{
		{"not measured", v1alpha1.CacheCovertChannel, Colocation{}, 1, "not measured"},
		{"bus locks need no cache", v1alpha1.BusLockCovertChannel, Colocation{WindowNS: window}, 1, "every core"},
		{"never together", v1alpha1.CacheSideChannel, Colocation{WindowNS: window}, noContactWeight, "implausible"},
		{"shared an LLC 5%", v1alpha1.CacheCovertChannel, Colocation{WindowNS: window, SharedLLCNS: window / 20}, 1, "5.0%"},
		{"SMT siblings count as sharing", v1alpha1.CacheSideChannel, Colocation{WindowNS: window, SMTSiblingNS: window / 50}, 1, "2.0%"},
		{"turns on one CPU", v1alpha1.CacheSideChannel, Colocation{WindowNS: window, Handovers: 40}, 1, "40 handovers"},
		{"half the contact", v1alpha1.CacheCovertChannel, Colocation{WindowNS: window, SharedLLCNS: window / 200}, noContactWeight + (1-noContactWeight)/2, "little"},
		{"a few handovers", v1alpha1.CacheCovertChannel, Colocation{WindowNS: window, Handovers: 2}, noContactWeight + (1-noContactWeight)*0.2, "2 handovers"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, why := ColocationWeight(tc.typ, tc.c)
			if d := w - tc.want; d > 1e-9 || d < -1e-9 || !strings.Contains(why, tc.because) {
				t.Errorf("ColocationWeight(%s, %+v) = %v, %q; want %v, %q", tc.typ, tc.c, w, why, tc.want, tc.because)
			}
		})
	}
}
