package discovery

import (
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
)

// VMI is what the agent needs to know about a VMI running on its node.
type VMI struct {
	Ref    VMIRef
	UID    types.UID
	Labels map[string]string
	// PodUIDs are the VMI's virt-launcher pods on this node
	// (status.activePods entries whose value is the node).
	PodUIDs []string
}

// NodeVMI converts a KubeVirt VMI. ok is false when the VMI does not run
// on node: not scheduled here (status.nodeName), or finished. During a live
// migration status.nodeName names the source until the target takes over,
// so exactly one node's agent watches a VMI at any time.
func NodeVMI(v *kubevirtv1.VirtualMachineInstance, node string) (VMI, bool) {
	if v.Status.NodeName != node || v.IsFinal() {
		return VMI{}, false
	}
	out := VMI{
		Ref:    VMIRef{Namespace: v.Namespace, Name: v.Name},
		UID:    v.UID,
		Labels: v.Labels,
	}
	for uid, n := range v.Status.ActivePods {
		if n == node {
			out.PodUIDs = append(out.PodUIDs, string(uid))
		}
	}
	slices.Sort(out.PodUIDs)
	return out, true
}

// Target is a VMI on this node with the QEMU process that runs it.
type Target struct {
	VMI     VMI
	Process Process
}

// Match pairs VMIs with QEMU processes by libvirt guest name. When the VMI
// lists its pods on this node, a process must run in one of them (a
// process in another pod is a stale or foreign QEMU with the same name);
// a process outside any pod (a QEMU started by hand, as in tests) is
// accepted only when no process runs in the VMI's pod. Among several
// candidates the most recently started wins.
func Match(vmis []VMI, procs []Process) (targets []Target, unresolved []VMI) {
	byName := make(map[VMIRef][]Process, len(procs))
	for _, p := range procs {
		byName[p.VMI] = append(byName[p.VMI], p)
	}
	for _, v := range vmis {
		best, ok := pick(v, byName[v.Ref])
		if !ok {
			unresolved = append(unresolved, v)
			continue
		}
		targets = append(targets, Target{VMI: v, Process: best})
	}
	return targets, unresolved
}

func pick(v VMI, cands []Process) (Process, bool) {
	var inPod, outside []Process
	for _, p := range cands {
		switch {
		case p.PodUID == "":
			outside = append(outside, p)
		case len(v.PodUIDs) == 0 || slices.Contains(v.PodUIDs, p.PodUID):
			inPod = append(inPod, p)
		}
	}
	pool := inPod
	if len(pool) == 0 {
		pool = outside
	}
	if len(pool) == 0 {
		return Process{}, false
	}
	return slices.MaxFunc(pool, func(a, b Process) int {
		switch {
		case a.StartTime != b.StartTime:
			if a.StartTime < b.StartTime {
				return -1
			}
			return 1
		}
		return a.PID - b.PID
	}), true
}

// Tracker keeps the QEMU processes of the VMIs on this node up to date
// while reading as little of the proc tree as it can: a full scan only
// when a VMI has no process yet or every FullScanEvery, otherwise one
// directory listing per known process to notice threads coming and going.
type Tracker struct {
	Scanner Scanner
	// FullScanEvery bounds how long a new QEMU process of an already
	// resolved VMI (e.g. a restart) can go unnoticed. Default 30s.
	FullScanEvery time.Duration

	known    map[int]trackedProcess
	lastFull time.Time
}

type trackedProcess struct {
	proc  Process
	tasks []int
}

// Refresh returns the targets for vmis and the VMIs whose QEMU process
// was not found (yet: the pod may still be starting).
func (t *Tracker) Refresh(now time.Time, vmis []VMI) (targets []Target, unresolved []VMI, err error) {
	if t.known == nil {
		t.known = map[int]trackedProcess{}
	}
	every := t.FullScanEvery
	if every <= 0 {
		every = 30 * time.Second
	}
	full := now.Sub(t.lastFull) >= every
	if !full {
		t.refreshKnown()
		_, unresolved = Match(vmis, t.procs())
		full = len(unresolved) > 0
	}
	if full {
		if err := t.fullScan(); err != nil {
			return nil, nil, err
		}
		t.lastFull = now
	}
	targets, unresolved = Match(vmis, t.procs())
	return targets, unresolved, nil
}

func (t *Tracker) procs() []Process {
	out := make([]Process, 0, len(t.known))
	for _, tp := range t.known {
		out = append(out, tp.proc)
	}
	slices.SortFunc(out, func(a, b Process) int { return a.PID - b.PID })
	return out
}

func (t *Tracker) fullScan() error {
	procs, err := t.Scanner.Scan()
	if err != nil {
		return err
	}
	next := make(map[int]trackedProcess, len(procs))
	for _, p := range procs {
		tasks, err := t.Scanner.TaskIDs(p.PID)
		if err != nil {
			continue
		}
		next[p.PID] = trackedProcess{proc: p, tasks: tasks}
	}
	t.known = next
	return nil
}

// refreshKnown re-reads a known process only when its thread count
// changed (a vCPU thread appeared or exited, or the PID now belongs to
// another process), and forgets processes that exited. The count comes
// from one stat of the task directory; a thread replaced by another in
// the same instant is caught by the periodic full scan (and an exited
// vCPU thread's perf events report it to the collector at once).
func (t *Tracker) refreshKnown() {
	for pid, tp := range t.known {
		n, err := t.Scanner.ThreadCount(pid)
		if err != nil {
			delete(t.known, pid)
			continue
		}
		if n == len(tp.tasks) {
			continue
		}
		tasks, err := t.Scanner.TaskIDs(pid)
		if err != nil {
			delete(t.known, pid)
			continue
		}
		p, ok, err := t.Scanner.Process(pid)
		if err != nil || !ok {
			delete(t.known, pid)
			continue
		}
		t.known[pid] = trackedProcess{proc: p, tasks: tasks}
	}
}

// AllTargets turns every guest process into a target, for `record` without
// an API server: the guest name is the only identity there is.
func AllTargets(procs []Process) []Target {
	out := make([]Target, 0, len(procs))
	for _, p := range procs {
		out = append(out, Target{VMI: VMI{Ref: p.VMI}, Process: p})
	}
	return out
}

// FilterRefs keeps the processes whose VMI matches one of the patterns
// "namespace/name", "namespace/*" or "name"; no patterns keep all.
func FilterRefs(procs []Process, patterns []string) []Process {
	if len(patterns) == 0 {
		return procs
	}
	var out []Process
	for _, p := range procs {
		for _, pat := range patterns {
			ns, name, hasNS := strings.Cut(pat, "/")
			if !hasNS {
				name, ns = ns, ""
			}
			if (ns == "" || ns == p.VMI.Namespace) && (name == "*" || name == p.VMI.Name) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}
