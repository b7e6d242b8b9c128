package agent

import (
	"context"
	"time"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

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
	if h := a.history[ref]; h != nil && a.opts.Attributor != nil {
		in.addrs = h.topAddrs(maxAttributedAddrs)
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
