package agent

import (
	"cmp"
	"context"
	"slices"
	"time"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

// addrRingSize bounds the sampled guest addresses remembered per VMI.
const addrRingSize = 2048

// addrRing keeps a VMI's most recent sampled guest addresses.
type addrRing struct {
	buf  [addrRingSize]uint64
	next int
	n    int
}

func (r *addrRing) add(a uint64) {
	r.buf[r.next] = a
	r.next = (r.next + 1) % addrRingSize
	if r.n < addrRingSize {
		r.n++
	}
}

// top returns the k most frequent addresses, most samples first.
func (r *addrRing) top(k int) []AddrCount {
	counts := make(map[uint64]int64, r.n)
	for i := 0; i < r.n; i++ {
		counts[r.buf[i]]++
	}
	out := make([]AddrCount, 0, len(counts))
	for a, n := range counts {
		out = append(out, AddrCount{Addr: a, Samples: n})
	}
	slices.SortFunc(out, func(x, y AddrCount) int {
		if c := cmp.Compare(y.Samples, x.Samples); c != 0 {
			return c
		}
		return cmp.Compare(x.Addr, y.Addr)
	})
	if len(out) > k {
		out = out[:k]
	}
	return out
}

// attributionInput is a snapshot, taken in the loop, of what attribution
// of one VMI needs.
type attributionInput struct {
	ref   discovery.VMIRef
	pid   int
	addrs []AddrCount
}

type attributionJob struct {
	det      report.Detection
	victim   attributionInput
	suspects []attributionInput
}

// maxAttributedAddrs is how many distinct addresses per VMI are resolved.
const maxAttributedAddrs = 64

// maxGuestPrograms is the schema's bound on victim.guest and suspects[].guest.
const maxGuestPrograms = 16

func (a *Agent) attributionInput(ref discovery.VMIRef) attributionInput {
	in := attributionInput{ref: ref, pid: a.pids[ref]}
	if r := a.addrs[ref]; r != nil && a.opts.Attributor != nil {
		in.addrs = r.top(maxAttributedAddrs)
	}
	return in
}

// attributeLoop resolves queued detections' addresses (reading guest
// memory takes time, so not in the loop that drains the collector) and
// reports them. At shutdown it reports what is still queued, unattributed:
// a detection is never dropped for attribution.
func (a *Agent) attributeLoop(ctx context.Context) {
	for {
		select {
		case job := <-a.attrQueue:
			a.report(a.attribute(ctx, job))
		case <-ctx.Done():
			for {
				select {
				case job := <-a.attrQueue:
					a.report(job.det)
				default:
					return
				}
			}
		}
	}
}

func (a *Agent) attribute(ctx context.Context, job attributionJob) report.Detection {
	d := job.det
	if a.opts.Attributor == nil {
		return d
	}
	resolve := func(in attributionInput) []v1alpha1.GuestProgram {
		if len(in.addrs) == 0 || in.pid == 0 {
			return nil
		}
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		progs, err := a.opts.Attributor.Attribute(actx, report.VMIRef(in.ref), in.pid, in.addrs)
		if err != nil {
			a.log.Info("attribution failed", "vmi", in.ref, "err", err.Error())
			return nil
		}
		if len(progs) > maxGuestPrograms {
			progs = progs[:maxGuestPrograms]
		}
		return progs
	}
	d.VictimGuest = resolve(job.victim)
	for i, in := range job.suspects {
		if i < len(d.Suspects) {
			d.Suspects[i].Guest = resolve(in)
		}
	}
	return d
}

func (a *Agent) report(d report.Detection) {
	if a.opts.OnDetection != nil {
		a.opts.OnDetection(d)
	}
	if a.opts.Findings != nil {
		a.opts.Findings.Report(d)
	}
}
