package agent_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
)

// covertTrace writes a cache-oscillation covert channel between two VMIs
// on one node, with a third benign neighbour: the sender thrashes the LLC
// for "1" bits and idles for "0" bits, each bit lasting period; the
// receiver's probes miss when the sender ran. Counter rows every interval,
// llc_misses overflow samples every samplePeriod misses.
func covertTrace(w io.Writer, seconds int, period, interval int64, samplePeriod uint64) {
	rng := rand.New(rand.NewPCG(1, 2))
	fmt.Fprintf(w, "# sidewatch-trace: v1\n# interval: %dns\n# sample_period.llc_misses: %d\ntime_ns,node,namespace,vmi,vcpu,event,value\n", interval, samplePeriod)
	const t0 = int64(1_700_000_000_000_000_000)
	end := int64(seconds) * 1_000_000_000
	var carry = map[string]float64{}
	bits := make([]bool, end/period+1)
	for i := range bits {
		bits[i] = i%2 == 0 || rng.IntN(4) == 0 // mostly alternating: a clocked channel
	}
	for t := interval; t <= end; t += interval {
		one := bits[(t-interval)/period]
		rates := map[string]float64{ // misses per second
			"sender":   map[bool]float64{true: 4e6, false: 2e5}[one],
			"receiver": map[bool]float64{true: 3e6, false: 4e5}[one],
			"web":      6e5,
		}
		var sb strings.Builder
		for _, vm := range []string{"receiver", "sender", "web"} {
			miss := rates[vm] * float64(interval) / 1e9 * (0.9 + 0.2*rng.Float64())
			ref := miss * 4
			ts := t0 + t
			// samples spread over the interval, before the counter row
			n := carry[vm] + miss/float64(samplePeriod)
			for k := 0; k < int(n); k++ {
				st := ts - interval + int64(float64(interval)*(float64(k)+0.5)/float64(int(n)))
				fmt.Fprintf(&sb, "%d,n1,prod,%s,0,sample.llc_misses,0x%x\n", st, vm, 0x7f0000001000+rng.IntN(64)*64)
			}
			carry[vm] = n - float64(int(n))
			fmt.Fprintf(&sb, "%d,n1,prod,%s,0,llc_references,%d\n%d,n1,prod,%s,0,llc_misses,%d\n%d,n1,prod,%s,0,instructions,%d\n",
				ts, vm, int64(ref), ts, vm, int64(miss), ts, vm, int64(2e9*float64(interval)/1e9))
		}
		io.WriteString(w, sb.String())
	}
}
