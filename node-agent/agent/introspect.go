package agent

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/introspect"
	"github.com/sidewatch/sidewatch/node-agent/report"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// Introspector attributes sampled guest addresses with node-agent/introspect
// (reading guest memory from the host): it is the agent's Attributor (the
// guest programs named in findings) and the detection engine's Resolver
// (which code a sampled RIP is in, for the side-channel signatures).
//
// It needs, per QEMU, a QMP monitor it can use: the socket of a `-qmp` (or
// a `-chardev socket,path=...` serving `-mon ...,mode=control`) on QEMU's
// command line that no one else holds. libvirt in virt-launcher keeps its
// own monitor; a second QMP socket added to the domain (a KubeVirt hook
// sidecar adding `-qmp unix:/var/run/sidewatch/qmp.sock,server=on,wait=off`)
// serves sidewatch. Without one, attribution is skipped for that VMI and the
// reason logged once.
type Introspector struct {
	log      logr.Logger
	procRoot string
	cache    *introspect.KernelCache
	// open attaches to a guest; tests replace it.
	open func(ctx context.Context, pid int) (*introspect.Guest, error)

	mu     sync.Mutex
	guests map[report.VMIRef]*guestEntry
	// sample is the sample the agent is feeding to the engine, so that
	// Resolve knows its vCPU and time.
	sample struct {
		vmi  report.VMIRef
		vcpu int
		at   time.Time
	}
}

type guestEntry struct {
	pid      int
	g        *introspect.Guest
	opening  bool
	err      error
	failedAt time.Time
	logged   bool
}

// retryOpen is how long a guest that could not be opened is left alone.
const retryOpen = time.Minute

// NewIntrospector makes an introspector reading guests through procRoot
// (the host's /proc).
func NewIntrospector(log logr.Logger, procRoot string) *Introspector {
	in := &Introspector{log: log, procRoot: procRoot, cache: &introspect.KernelCache{}, guests: map[report.VMIRef]*guestEntry{}}
	in.open = in.openGuest
	return in
}

func (in *Introspector) openGuest(ctx context.Context, pid int) (*introspect.Guest, error) {
	sock, err := QMPSocket(in.procRoot, pid)
	if err != nil {
		return nil, err
	}
	// A unix socket path holds at most 107 bytes, and the path through
	// /host/proc/<pid>/root can be longer: go through a descriptor of its
	// directory instead.
	if len(sock) > 100 {
		dir, base := filepath.Split(sock)
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("QMP socket directory %s: %w", dir, err)
		}
		defer unix.Close(fd)
		sock = fmt.Sprintf("/proc/self/fd/%d/%s", fd, base)
	}
	return introspect.Open(ctx, introspect.Source{PID: pid, QMPSocket: sock}, introspect.Options{Cache: in.cache})
}

// SetVMI tells the introspector a VMI's QEMU process; pid 0 forgets the VMI
// (it left the node). A new pid (QEMU restarted) closes the old guest.
func (in *Introspector) SetVMI(vmi report.VMIRef, pid int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	e := in.guests[vmi]
	if e != nil && e.pid == pid {
		return
	}
	if e != nil && e.g != nil {
		_ = e.g.Close()
	}
	if pid == 0 {
		delete(in.guests, vmi)
		return
	}
	in.guests[vmi] = &guestEntry{pid: pid}
}

// guest returns the open guest of a VMI, starting to open it in the
// background when it is not (opening reads the guest kernel: about a
// second).
func (in *Introspector) guest(vmi report.VMIRef) *introspect.Guest {
	in.mu.Lock()
	defer in.mu.Unlock()
	e := in.guests[vmi]
	if e == nil || e.g != nil || e.opening {
		if e == nil {
			return nil
		}
		return e.g
	}
	if e.err != nil && time.Since(e.failedAt) < retryOpen {
		return nil
	}
	e.opening = true
	go func(pid int) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		g, err := in.open(ctx, pid)
		in.mu.Lock()
		defer in.mu.Unlock()
		cur := in.guests[vmi]
		if cur != e { // forgotten or replaced meanwhile
			if g != nil {
				_ = g.Close()
			}
			return
		}
		e.opening = false
		if err != nil {
			e.err, e.failedAt = err, time.Now()
			if !e.logged {
				in.log.Info("guest introspection unavailable; findings about this VMI carry no guest programs", "vmi", vmi, "pid", pid, "err", err.Error())
				e.logged = true
			}
			return
		}
		e.g, e.err = g, nil
		in.log.Info("guest introspection attached", "vmi", vmi, "pid", pid, "kernel", g.Kernel().Banner)
	}(e.pid)
	return nil
}

// Prepare starts opening a VMI's guest ahead of need (protected VMIs, so
// their sensitive code is recognised from the first samples).
func (in *Introspector) Prepare(vmi report.VMIRef) { in.guest(vmi) }

// Sample sets the sample the engine is about to see (vCPU and time), for
// Resolve.
func (in *Introspector) Sample(vmi report.VMIRef, vcpu int, t int64) {
	in.sample.vmi, in.sample.vcpu, in.sample.at = vmi, vcpu, time.Unix(0, t)
}

// Resolve implements detect.Resolver: the region of code holding rip. A
// guest not attached yet answers false (and starts attaching).
func (in *Introspector) Resolve(vmi detect.VMIRef, rip uint64) (trace.GuestRegion, bool) {
	ref := report.VMIRef{Namespace: vmi.Namespace, Name: vmi.Name}
	g := in.guest(ref)
	if g == nil {
		return trace.GuestRegion{}, false
	}
	q := introspect.Query{Address: rip, VCPU: -1}
	if in.sample.vmi == ref {
		q.VCPU, q.At = in.sample.vcpu, in.sample.at
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	a, err := g.Resolve(ctx, q)
	if err != nil || a.Path == "" {
		return trace.GuestRegion{}, false
	}
	r := trace.GuestRegion{Namespace: vmi.Namespace, VMI: vmi.Name, Path: a.Path, Symbol: a.Symbol}
	switch {
	case a.Symbol != "":
		// The function's extent is unknown: claim only rip's page (the
		// engine asks once per page).
		r.Start, r.End = rip&^0xfff, rip&^0xfff+0x1000
		if m := a.Mapping; m != nil {
			r.Start, r.End = max(r.Start, m.Start), min(r.End, m.End)
		}
	case a.Mapping != nil:
		r.Start, r.End = a.Mapping.Start, a.Mapping.End
	default:
		r.Start, r.End = rip&^0xfff, rip&^0xfff+0x1000
	}
	return r, r.End > r.Start
}

// attached returns the VMI's open guest, waiting a little (within ctx) for
// one being opened.
func (in *Introspector) attached(ctx context.Context, vmi report.VMIRef, qemuPID int) (*introspect.Guest, error) {
	in.mu.Lock()
	if e := in.guests[vmi]; e == nil || e.pid != qemuPID {
		in.mu.Unlock()
		in.SetVMI(vmi, qemuPID)
	} else {
		in.mu.Unlock()
	}
	g := in.guest(vmi)
	if g != nil {
		return g, nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest introspection of %s: not attached yet: %w", vmi, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		in.mu.Lock()
		e := in.guests[vmi]
		if e != nil && !e.opening && e.err != nil {
			err := e.err
			in.mu.Unlock()
			return nil, fmt.Errorf("guest introspection of %s unavailable: %w", vmi, err)
		}
		if e != nil && e.g != nil {
			g := e.g
			in.mu.Unlock()
			return g, nil
		}
		in.mu.Unlock()
	}
	return nil, fmt.Errorf("guest introspection of %s: not attached yet", vmi)
}

// Attribute implements Attributor: the guest programs the sampled addresses
// belong to, most samples first.
func (in *Introspector) Attribute(ctx context.Context, vmi report.VMIRef, qemuPID int, addrs []AddrCount) ([]v1alpha1.GuestProgram, error) {
	g, err := in.attached(ctx, vmi, qemuPID)
	if err != nil {
		return nil, err
	}
	type key struct {
		pid  int
		path string
	}
	type agg struct {
		p       v1alpha1.GuestProgram
		offsets map[uint64]int64
		symbols map[uint64]string
	}
	progs := map[key]*agg{}
	for _, ac := range addrs {
		a, err := g.Resolve(ctx, introspect.Query{Address: ac.Addr, VCPU: ac.VCPU, At: ac.At})
		if err != nil || a.Path == "" {
			continue
		}
		k := key{a.PID, a.Path}
		p := progs[k]
		if p == nil {
			p = &agg{p: v1alpha1.GuestProgram{PID: int32(a.PID), Comm: a.Comm, Path: a.Path}, offsets: map[uint64]int64{}, symbols: map[uint64]string{}}
			progs[k] = p
		}
		p.p.Samples += ac.Samples
		p.offsets[a.Offset] += ac.Samples
		p.symbols[a.Offset] = a.Symbol
	}
	out := make([]v1alpha1.GuestProgram, 0, len(progs))
	for _, p := range progs {
		var best uint64
		var n int64 = -1
		for off, c := range p.offsets {
			if c > n || (c == n && off < best) {
				best, n = off, c
			}
		}
		p.p.Offset = "0x" + strconv.FormatUint(best, 16)
		p.p.Symbol = p.symbols[best]
		p.p.Comm = clip(p.p.Comm, 64)
		p.p.Path = clip(p.p.Path, 4096)
		p.p.Symbol = clip(p.p.Symbol, 512)
		out = append(out, p.p)
	}
	slices.SortFunc(out, func(a, b v1alpha1.GuestProgram) int {
		if c := cmp.Compare(b.Samples, a.Samples); c != 0 {
			return c
		}
		return cmp.Compare(a.Path, b.Path)
	})
	return out[:min(len(out), maxGuestPrograms)], nil
}

// maxLibraries bounds the libraries listed per guest process in a
// snapshot (the evidence format's own cap).
const maxLibraries = 256

// GuestProcesses implements GuestProcessLister: the guest's processes
// (kernel threads included) with, for user processes, the executable and
// the other files mapped executable (libraries), in pid order. On a
// timeout or an unreadable memory map the processes read so far come back
// with the error.
func (in *Introspector) GuestProcesses(ctx context.Context, vmi report.VMIRef, qemuPID int) ([]evidence.Process, error) {
	g, err := in.attached(ctx, vmi, qemuPID)
	if err != nil {
		return nil, err
	}
	procs, err := g.Processes(ctx)
	if err != nil && len(procs) == 0 {
		return nil, fmt.Errorf("guest processes of %s: %w", vmi, err)
	}
	slices.SortFunc(procs, func(a, b introspect.Process) int { return cmp.Compare(a.PID, b.PID) })
	out := make([]evidence.Process, 0, len(procs))
	var mapErrs int
	var firstErr error
	for i, p := range procs {
		if cerr := ctx.Err(); cerr != nil {
			return out, fmt.Errorf("guest processes of %s: listed %d of %d before the deadline: %w", vmi, i, len(procs), cerr)
		}
		ep := evidence.Process{PID: int32(p.PID), PPID: int32(p.PPID), Comm: p.Comm}
		if !p.Kernel {
			maps, merr := g.Maps(ctx, p.PID)
			if merr != nil {
				mapErrs++
				if firstErr == nil {
					firstErr = fmt.Errorf("pid %d: %w", p.PID, merr)
				}
			}
			ep.Exe, ep.Libraries = exeAndLibraries(maps)
		}
		out = append(out, ep)
	}
	if mapErrs > 0 {
		return out, fmt.Errorf("guest processes of %s: %d memory maps unreadable, e.g. %w", vmi, mapErrs, firstErr)
	}
	return out, err
}

// exeAndLibraries reads a process's executable and libraries off its
// memory map: the executable is the file mapped lowest (the kernel maps it
// before the interpreter and libraries, as /proc/<pid>/exe would say), the
// libraries every other file mapped executable, in address order.
func exeAndLibraries(maps []introspect.Mapping) (string, []string) {
	exe := ""
	var libs []string
	for _, m := range maps {
		if m.Path == "" || strings.HasPrefix(m.Path, "[") {
			continue
		}
		if exe == "" {
			exe = m.Path
			continue
		}
		if m.Path != exe && strings.Contains(m.Perms, "x") && !slices.Contains(libs, m.Path) && len(libs) < maxLibraries {
			libs = append(libs, m.Path)
		}
	}
	return exe, libs
}

// AttributeSamples implements SampleAttributor: each sample's address on
// its vCPU at its time. Identical queries are resolved once. A sample that
// cannot be placed keeps its address only.
func (in *Introspector) AttributeSamples(ctx context.Context, vmi report.VMIRef, qemuPID int, onset time.Time, samples []evidence.Sample) error {
	g, err := in.attached(ctx, vmi, qemuPID)
	if err != nil {
		return err
	}
	type key struct {
		addr uint64
		vcpu int32
	}
	type result struct {
		a   introspect.Attribution
		err error
	}
	memo := map[key]result{}
	failed := 0
	var firstErr error
	for i := range samples {
		sm := &samples[i]
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("attributed %d of %d samples before the deadline: %w", i, len(samples), cerr)
		}
		k := key{uint64(sm.RIP), sm.VCPU}
		r, ok := memo[k]
		if !ok {
			r.a, r.err = g.Resolve(ctx, introspect.Query{Address: uint64(sm.RIP), VCPU: int(sm.VCPU), At: onset.Add(time.Duration(sm.TNs))})
			memo[k] = r
		}
		if r.err != nil || r.a.Path == "" {
			failed++
			if firstErr == nil && r.err != nil {
				firstErr = r.err
			}
			continue
		}
		sm.PID, sm.Comm, sm.Path, sm.Offset, sm.Symbol, sm.Via = int32(r.a.PID), clip(r.a.Comm, 64), clip(r.a.Path, 4096), evidence.Hex(r.a.Offset), clip(r.a.Symbol, 512), r.a.Via
	}
	if failed > 0 && firstErr != nil {
		return fmt.Errorf("%d of %d samples not attributed, e.g. %w", failed, len(samples), firstErr)
	}
	return nil
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// Close detaches from every guest.
func (in *Introspector) Close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	for k, e := range in.guests {
		if e.g != nil {
			_ = e.g.Close()
		}
		delete(in.guests, k)
	}
	return nil
}

// QMPSocket finds on a QEMU process's command line a QMP socket path, as
// seen from the host: `-qmp unix:PATH[,...]`, or `-chardev
// socket,id=ID,path=PATH` named by `-mon chardev=ID,mode=control`. The path
// is resolved in QEMU's mount namespace through <procRoot>/<pid>/root.
func QMPSocket(procRoot string, pid int) (string, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return "", fmt.Errorf("QEMU pid %d: %w", pid, err)
	}
	args := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
	path := ""
	chardevs := map[string]string{}
	var monitors []string
	for i := 0; i+1 < len(args); i++ {
		v := args[i+1]
		switch args[i] {
		case "-qmp", "--qmp":
			if p, ok := strings.CutPrefix(v, "unix:"); ok && path == "" {
				path, _, _ = strings.Cut(p, ",")
			}
		case "-chardev":
			opts := strings.Split(v, ",")
			if len(opts) > 0 && opts[0] == "socket" {
				id, p := "", ""
				for _, o := range opts[1:] {
					if s, ok := strings.CutPrefix(o, "id="); ok {
						id = s
					}
					if s, ok := strings.CutPrefix(o, "path="); ok {
						p = s
					}
				}
				if id != "" && p != "" {
					chardevs[id] = p
				}
			}
		case "-mon":
			if strings.Contains(v, "mode=control") {
				for _, o := range strings.Split(v, ",") {
					if s, ok := strings.CutPrefix(o, "chardev="); ok {
						monitors = append(monitors, s)
					}
				}
			}
		}
	}
	if path == "" {
		for _, id := range monitors {
			if p := chardevs[id]; p != "" {
				path = p
				break
			}
		}
	}
	if path == "" {
		return "", fmt.Errorf("QEMU pid %d has no QMP socket on its command line (libvirt's monitor is passed as a descriptor): add one for sidewatch, e.g. -qmp unix:/var/run/sidewatch/qmp.sock,server=on,wait=off", pid)
	}
	if filepath.IsAbs(path) {
		path = filepath.Join(procRoot, strconv.Itoa(pid), "root", path)
	}
	return path, nil
}
