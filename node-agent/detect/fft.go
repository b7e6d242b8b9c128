package detect

import (
	"math"
	"math/bits"
	"math/cmplx"
)

// fft is an in-place iterative radix-2 FFT over power-of-two sizes up to
// the size its twiddle table was built for. It allocates only when a
// larger size is first requested.
type fft struct {
	max     int
	twiddle []complex128 // exp(-2πik/max), k < max/2
}

func (f *fft) ensure(n int) {
	if n <= f.max {
		return
	}
	f.max = n
	f.twiddle = make([]complex128, n/2)
	for k := range f.twiddle {
		s, c := math.Sincos(-2 * math.Pi * float64(k) / float64(n))
		f.twiddle[k] = complex(c, s)
	}
}

// transform computes the DFT of x (len a power of two) in place; inverse
// computes the unscaled inverse DFT.
func (f *fft) transform(x []complex128, inverse bool) {
	n := len(x)
	if n <= 1 {
		return
	}
	f.ensure(n)
	shift := 64 - uint(bits.TrailingZeros(uint(n)))
	for i := range n {
		j := int(bits.Reverse64(uint64(i)) >> shift)
		if j > i {
			x[i], x[j] = x[j], x[i]
		}
	}
	for size := 2; size <= n; size <<= 1 {
		half := size >> 1
		step := f.max / size
		for start := 0; start < n; start += size {
			k := 0
			for j := start; j < start+half; j++ {
				w := f.twiddle[k]
				if inverse {
					w = cmplx.Conj(w)
				}
				t := w * x[j+half]
				x[j+half] = x[j] - t
				x[j] += t
				k += step
			}
		}
	}
}

func nextPow2(n int) int {
	if n <= 1 {
		return 1
	}
	return 1 << bits.Len(uint(n-1))
}
