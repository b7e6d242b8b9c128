package detect

import (
	"math"
	"math/cmplx"
	"math/rand/v2"
	"testing"
)

func TestFFTMatchesDFT(t *testing.T) {
	var f fft
	for _, n := range []int{1, 2, 8, 64, 512} {
		rng := rand.New(rand.NewPCG(1, uint64(n)))
		x := make([]complex128, n)
		for i := range x {
			x[i] = complex(rng.NormFloat64(), rng.NormFloat64())
		}
		want := make([]complex128, n)
		for k := range n {
			for j := range n {
				want[k] += x[j] * cmplx.Exp(complex(0, -2*math.Pi*float64(j*k)/float64(n)))
			}
		}
		got := append([]complex128(nil), x...)
		f.transform(got, false)
		for k := range n {
			if cmplx.Abs(got[k]-want[k]) > 1e-9*float64(n) {
				t.Fatalf("n=%d k=%d: got %v, want %v", n, k, got[k], want[k])
			}
		}
		f.transform(got, true)
		for k := range n {
			if cmplx.Abs(got[k]/complex(float64(n), 0)-x[k]) > 1e-9 {
				t.Fatalf("n=%d: inverse does not round trip at %d", n, k)
			}
		}
	}
}
