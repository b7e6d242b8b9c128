package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/report"
)

// attributionInput is a snapshot, taken in the loop, of what attribution
// of one VMI needs.
type attributionInput struct {
	ref   discovery.VMIRef
	pid   int
	tids  []int // its vCPU threads
	addrs []AddrCount
}

// GuestProcessLister is implemented by attributors that list a VMI's guest
// processes, with executables and libraries, for evidence snapshots
// (Introspector).
type GuestProcessLister interface {
	GuestProcesses(ctx context.Context, vmi report.VMIRef, qemuPID int) ([]evidence.Process, error)
}

// SampleAttributor is implemented by attributors that attribute evidence
// samples one by one, each on its vCPU at its time (onset plus TNs),
// filling PID, Comm, Path, Offset, Symbol and Via (Introspector).
type SampleAttributor interface {
	AttributeSamples(ctx context.Context, vmi report.VMIRef, qemuPID int, onset time.Time, samples []evidence.Sample) error
}

// Timeouts of the parts of a snapshot read from guest memory, per VMI.
const (
	processesTimeout = 3 * time.Second
	samplesTimeout   = 2 * time.Second
)

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
	for _, t := range a.lastThreads {
		if t.Stream.Namespace == ref.Namespace && t.Stream.VMI == ref.Name {
			in.tids = append(in.tids, t.TID)
		}
	}
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
					a.report(withoutIntrospection(job, "not captured: the agent was stopping"))
				default:
					return
				}
			}
		}
	}
}

func (a *Agent) attribute(ctx context.Context, job attributionJob) report.Detection {
	d := job.det
	if d.Snapshot != nil {
		a.completeSnapshot(ctx, job)
	}
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

// completeSnapshot adds to a detection's snapshot what needs reads outside
// the loop: each VMI's guest processes, the attribution of each sample,
// and the host CPUs its vCPU threads were on. Each part has its timeout; a
// part that cannot be read says why (ProcessList.Error, Snapshot.Gaps).
func (a *Agent) completeSnapshot(ctx context.Context, job attributionJob) {
	s := job.det.Snapshot
	lister, _ := a.opts.Attributor.(GuestProcessLister)
	sampler, _ := a.opts.Attributor.(SampleAttributor)
	for _, in := range append([]attributionInput{job.victim}, job.suspects...) {
		key := in.ref.Namespace + "/" + in.ref.Name
		ref := report.VMIRef(in.ref)

		if i := slices.IndexFunc(s.VMIs, func(v evidence.VMI) bool { return v.Key() == key }); i >= 0 {
			cpus, err := hostCPUs(a.opts.ProcRoot, in.pid, in.tids)
			if err != nil {
				s.Gaps = append(s.Gaps, evidence.Gap{Part: "hostCPUs", VMI: key, Reason: err.Error()})
			}
			s.VMIs[i].HostCPUs = cpus
		}

		pl := evidence.ProcessList{VMI: key}
		switch {
		case lister == nil:
			pl.Error = "not captured: guest introspection is not configured on this agent"
		case in.pid == 0:
			pl.Error = "not captured: the VMI's QEMU process was not found on this node"
		default:
			pctx, cancel := context.WithTimeout(ctx, processesTimeout)
			procs, err := lister.GuestProcesses(pctx, ref, in.pid)
			cancel()
			pl.Processes, pl.Total = procs, len(procs)
			if err != nil {
				pl.Error = err.Error()
			}
		}
		s.Processes = append(s.Processes, pl)

		var idx []int
		for i := range s.Samples {
			if s.Samples[i].VMI == key {
				idx = append(idx, i)
			}
		}
		if len(idx) == 0 {
			continue
		}
		reason := ""
		switch {
		case sampler == nil:
			reason = "not attributed: guest introspection is not configured on this agent"
		case in.pid == 0:
			reason = "not attributed: the VMI's QEMU process was not found on this node"
		default:
			batch := make([]evidence.Sample, len(idx))
			for j, i := range idx {
				batch[j] = s.Samples[i]
			}
			sctx, cancel := context.WithTimeout(ctx, samplesTimeout)
			err := sampler.AttributeSamples(sctx, ref, in.pid, s.Onset, batch)
			cancel()
			for j, i := range idx {
				s.Samples[i] = batch[j]
			}
			if err != nil {
				reason = err.Error()
			}
		}
		if reason != "" {
			s.Gaps = append(s.Gaps, evidence.Gap{Part: "samples", VMI: key, Reason: reason})
		}
	}
}

// withoutIntrospection is a queued detection reported without attribution:
// its snapshot says why the guest parts are missing.
func withoutIntrospection(job attributionJob, reason string) report.Detection {
	d := job.det
	if s := d.Snapshot; s != nil {
		for _, in := range append([]attributionInput{job.victim}, job.suspects...) {
			key := in.ref.Namespace + "/" + in.ref.Name
			s.Processes = append(s.Processes, evidence.ProcessList{VMI: key, Error: reason})
			if slices.ContainsFunc(s.Samples, func(x evidence.Sample) bool { return x.VMI == key }) {
				s.Gaps = append(s.Gaps, evidence.Gap{Part: "samples", VMI: key, Reason: reason})
			}
		}
	}
	return d
}

// hostCPUs returns the host CPUs the threads last ran on (field 39 of
// /proc/<pid>/task/<tid>/stat), sorted.
func hostCPUs(procRoot string, pid int, tids []int) ([]int32, error) {
	if pid == 0 || len(tids) == 0 {
		return nil, errors.New("not captured: no vCPU thread of the VMI is watched on this node")
	}
	var out []int32
	var errs []error
	for _, tid := range tids {
		b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "task", strconv.Itoa(tid), "stat"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cpu, err := lastCPU(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("thread %d: %w", tid, err))
			continue
		}
		if !slices.Contains(out, cpu) {
			out = append(out, cpu)
		}
	}
	slices.Sort(out)
	if len(errs) > 0 {
		return out, fmt.Errorf("partly captured: %w", errors.Join(errs...))
	}
	return out, nil
}

// lastCPU parses the processor field (39) of a /proc/<pid>/stat line. The
// comm (field 2) is in parentheses and may hold spaces and parentheses.
func lastCPU(stat []byte) (int32, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no comm")
	}
	f := strings.Fields(string(stat[i+1:]))
	const processor = 39 - 3 // fields after the comm start at field 3
	if len(f) <= processor {
		return 0, fmt.Errorf("stat: %d fields after the comm, want %d", len(f), processor+1)
	}
	n, err := strconv.ParseInt(f[processor], 10, 32)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("stat: processor %q", f[processor])
	}
	return int32(n), nil
}
