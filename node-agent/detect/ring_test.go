package detect

import (
	"math/rand/v2"
	"testing"
)

// TestCountRingSum checks the run-walking sum against bin-by-bin reads.
func TestCountRingSum(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	r := newCountRing(97)
	for i := int64(0); i < 500; i++ {
		for k := rng.IntN(3); k > 0; k-- {
			r.add(i)
		}
		if i%37 != 0 {
			continue
		}
		for _, tc := range []struct {
			from, to int64
			factor   int
		}{{i - 120, i + 1, 1}, {i - 50, i - 3, 3}, {i - 96, i + 1, 7}, {i + 5, i + 9, 2}} {
			n := int((tc.to - tc.from + int64(tc.factor) - 1) / int64(tc.factor))
			if n <= 0 {
				continue
			}
			got := make([]float64, n)
			gotTotal := r.sum(tc.from, tc.to, tc.factor, got)
			var wantTotal int64
			for j := range n {
				var s int64
				for k := 0; k < tc.factor; k++ {
					if x := tc.from + int64(j*tc.factor+k); x < tc.to {
						s += int64(r.get(x))
					}
				}
				wantTotal += s
				if got[j] != float64(s) {
					t.Fatalf("i=%d %+v bin %d: got %v, want %d", i, tc, j, got[j], s)
				}
			}
			if gotTotal != wantTotal {
				t.Fatalf("total: got %d, want %d", gotTotal, wantTotal)
			}
		}
	}
}
