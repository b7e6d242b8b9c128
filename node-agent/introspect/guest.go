package introspect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options tune a Guest.
type Options struct {
	// Cache shares kernel types and symbols between guests of one build.
	Cache *KernelCache
	// Limits bound every walk over guest memory.
	Limits Limits
	// MaxAge is how long a snapshot of processes and memory maps is
	// reused before Processes, Maps and Resolve refresh it (default 2 s).
	MaxAge time.Duration
	// RegistersMaxAge is how long vCPU registers from the monitor are
	// reused (default 1 s). The monitor stops each vCPU briefly to read
	// them, so they are asked for rarely.
	RegistersMaxAge time.Duration
	// SampleSkew is how far from a Query's time an observation of the
	// vCPU's running task may be and still attribute the sample to it
	// (default 20 ms).
	SampleSkew time.Duration
	// RefreshTimeout bounds one refresh (default 2 s).
	RefreshTimeout time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	o.Limits = o.Limits.withDefaults()
	if o.MaxAge <= 0 {
		o.MaxAge = 2 * time.Second
	}
	if o.RegistersMaxAge <= 0 {
		o.RegistersMaxAge = time.Second
	}
	if o.SampleSkew <= 0 {
		o.SampleSkew = 20 * time.Millisecond
	}
	if o.RefreshTimeout <= 0 {
		o.RefreshTimeout = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Process is one guest process (a thread group).
type Process struct {
	PID  int    `json:"pid"`
	PPID int    `json:"ppid"`
	Comm string `json:"comm"`
	// Kernel is true for kernel threads, which have no memory map.
	Kernel bool `json:"kernel,omitempty"`
}

// Mapping is one memory area of a process, as a line of /proc/<pid>/maps.
type Mapping struct {
	Start, End uint64
	// Perms is "rwxp"-style: read, write, execute, then s(hared) or p(rivate).
	Perms string
	// Offset is the file offset of Start (0 for anonymous memory).
	Offset uint64
	// Path is the file, or [heap], [stack], [vdso], [vvar], or "".
	Path string
}

type mappingJSON struct {
	Start  string `json:"start"`
	End    string `json:"end"`
	Perms  string `json:"perms"`
	Offset string `json:"offset"`
	Path   string `json:"path"`
}

// MarshalJSON writes addresses as hex strings ("0x7f3a2c000000").
func (m Mapping) MarshalJSON() ([]byte, error) {
	return json.Marshal(mappingJSON{Start: hex(m.Start), End: hex(m.End), Perms: m.Perms, Offset: hex(m.Offset), Path: m.Path})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (m *Mapping) UnmarshalJSON(b []byte) error {
	var j mappingJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	var err error
	if m.Start, err = ParseAddress(j.Start); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	if m.End, err = ParseAddress(j.End); err != nil {
		return fmt.Errorf("end: %w", err)
	}
	if m.Offset, err = ParseAddress(j.Offset); err != nil {
		return fmt.Errorf("offset: %w", err)
	}
	m.Perms, m.Path = j.Perms, j.Path
	return nil
}

func hex(v uint64) string { return fmt.Sprintf("%#x", v) }

// Query is one guest address to attribute.
type Query struct {
	// Address is the guest virtual address (a sampled RIP).
	Address uint64
	// VCPU is QEMU's vCPU index the sample came from, or -1.
	VCPU int
	// PID names the guest process when the caller knows it; otherwise the
	// task running on VCPU is used.
	PID int
	// At is when the sample was taken (zero: now). An observation of the
	// vCPU within Options.SampleSkew of it is preferred to reading the
	// running task again.
	At time.Time
}

// Attribution is what an address resolves to.
type Attribution struct {
	Address uint64 `json:"address"`
	VCPU    int    `json:"vcpu"`
	// Kernel is true for a kernel address.
	Kernel bool `json:"kernel"`
	// PID and Comm are the process the address belongs to (for a kernel
	// address, the task running on the vCPU, if known).
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
	// Path is the mapped file ("[kernel]" for the kernel image).
	Path string `json:"path"`
	// Offset is the offset in Path (for the kernel, from _text).
	Offset uint64 `json:"offset"`
	// Symbol and SymbolOffset name the function, when the file's (or the
	// kernel's) own symbol table knows it.
	Symbol       string `json:"symbol,omitempty"`
	SymbolOffset uint64 `json:"symbolOffset,omitempty"`
	// Mapping is the memory area holding a user address.
	Mapping *Mapping `json:"mapping,omitempty"`
	// Via says how the process was chosen: "pid", "vcpu" (running task
	// read now), "vcpu-history" (an observation near the sample time).
	Via string `json:"via"`
}

// SymbolString is "name+0xoff", or "" without a symbol.
func (a Attribution) SymbolString() string {
	if a.Symbol == "" {
		return ""
	}
	return fmt.Sprintf("%s+%#x", a.Symbol, a.SymbolOffset)
}

// VCPU is what runs on one vCPU.
type VCPU struct {
	// Index is QEMU's vCPU index; CPU the guest kernel's CPU number.
	Index int `json:"index"`
	CPU   int `json:"cpu"`
	// PID, TID and Comm are the running task's process, thread and name;
	// Kernel is true for a kernel thread or the idle task.
	PID    int    `json:"pid"`
	TID    int    `json:"tid"`
	Comm   string `json:"comm"`
	Kernel bool   `json:"kernel"`
	// Registers are the last registers the monitor gave (up to
	// Options.RegistersMaxAge old).
	Registers VCPURegisters `json:"registers"`
	At        time.Time     `json:"at"`
}

// KernelInfo describes the guest kernel introspection found.
type KernelInfo struct {
	Banner         string `json:"banner"`
	Text           uint64 `json:"text"`
	PagingLevels   int    `json:"pagingLevels"`
	BTFAddress     uint64 `json:"btfAddress"`
	BTFSize        uint64 `json:"btfSize"`
	SymbolSource   string `json:"symbolSource"`
	KallsymsLayout string `json:"kallsymsLayout,omitempty"`
	TextSymbols    int    `json:"textSymbols"`
	CPUs           int    `json:"cpus"`
	MapleTree      bool   `json:"mapleTree"`
}

// Stats report a Guest's cost.
type Stats struct {
	Processes int `json:"processes"`
	Mappings  int `json:"mappings"`
	// Refreshes counts full refreshes; LastRefresh is the last one's
	// duration.
	Refreshes   int           `json:"refreshes"`
	LastRefresh time.Duration `json:"lastRefresh"`
	RefreshedAt time.Time     `json:"refreshedAt"`
	// OpenDuration is how long Open took (kernel discovery).
	OpenDuration time.Duration `json:"openDuration"`
	// MemoryBytes estimates the memory this guest's caches hold;
	// SharedKernelBytes what its kernel's tables hold (shared through
	// a KernelCache with other guests of the same build).
	MemoryBytes       int64 `json:"memoryBytes"`
	SharedKernelBytes int64 `json:"sharedKernelBytes"`
	ELFFiles          int   `json:"elfFiles"`
	ELFBytes          int64 `json:"elfBytes"`
	// PartialErrors counts refreshes that read an inconsistent (torn or
	// hostile) structure and kept what was readable; LastError says why.
	PartialErrors int    `json:"partialErrors"`
	LastError     string `json:"lastError,omitempty"`
}

// Guest introspects one running guest. Its methods are safe for concurrent
// use; they serialise on the guest.
type Guest struct {
	mu      sync.Mutex
	opts    Options
	mon     Monitor
	ownMon  bool
	mem     *physMem
	k       *kernel
	kv      vmem
	pc      *pageCache
	regs    []VCPURegisters
	regsAt  time.Time
	cpuOf   map[int]int // vCPU index -> guest CPU number
	snap    *snapshot
	gen     uint64
	history map[int][]observation
	elf     map[elfKey]*elfEntry
	elfLRU  uint64
	elfSize int64
	stats   Stats
	banner  string
}

type observation struct {
	at   time.Time
	task taskInfo
}

// snapshot is the process list with every process's memory map.
type snapshot struct {
	at    time.Time
	gen   uint64
	procs []*procState // sorted by pid
	byPID map[int]*procState
	byMM  map[uint64]*procState // user processes by mm_struct
	mods  []*kmodule            // loaded kernel modules by text address
	bytes int64
}

type procState struct {
	Process
	task, mm uint64
	maps     []Mapping
	vmas     []vmaInfo
	mapsErr  error
	elf      map[uint64]*elfEntry // by vm_file pointer
}

// Open attaches to a running guest: it reads registers from the monitor,
// finds the kernel, its BTF and symbols in guest memory, and is then ready
// to list processes and resolve addresses. It never pauses the guest.
func Open(ctx context.Context, src Source, opts Options) (g *Guest, err error) {
	if err := src.validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	start := opts.Now()
	g = &Guest{opts: opts, cpuOf: map[int]int{}, history: map[int][]observation{}, elf: map[elfKey]*elfEntry{}}
	defer func() {
		if err != nil {
			g.Close()
			g = nil
		}
	}()
	g.mon = src.Monitor
	if g.mon == nil {
		if g.mon, err = DialQMP(ctx, src.QMPSocket); err != nil {
			return nil, err
		}
		g.ownMon = true
	}
	b, layout, err := openBacking(ctx, src, g.mon)
	if err != nil {
		return nil, err
	}
	if g.mem, err = newPhysMem(layout, b); err != nil {
		b.close()
		return nil, fmt.Errorf("introspect: %w", err)
	}
	defer guardFaults(&err)()
	if err := g.readRegisters(ctx, true); err != nil {
		return nil, err
	}
	if g.k, err = discoverKernel(g.mem, g.regs, opts.Cache, src.SystemMap); err != nil {
		return nil, fmt.Errorf("introspect: %w", err)
	}
	g.kv = vmem{g.k.mmu}
	g.pc = &pageCache{m: g.kv, t: g.k.types, vmemmap: vmemmap4Level}
	if g.k.levels == 5 {
		g.pc.vmemmap = vmemmap5Level
	}
	if p, ok := g.k.syms.sym("vmemmap_base"); ok {
		if v, err := g.kv.u64(p); err == nil && v >= kernelSpace {
			g.pc.vmemmap = v
		}
	}
	if p, ok := g.k.syms.sym("linux_banner"); ok {
		var b [256]byte
		if err := g.kv.read(b[:], p); err == nil {
			s := string(b[:])
			if i := strings.IndexByte(s, 0); i >= 0 {
				s = s[:i]
			}
			g.banner = cString([]byte(strings.TrimSpace(s)))
		}
	}
	g.mapCPUs()
	g.stats.OpenDuration = opts.Now().Sub(start)
	return g, nil
}

// openBacking opens guest RAM as the source says and works out its layout.
func openBacking(ctx context.Context, src Source, mon Monitor) (backing, RAMLayout, error) {
	var dev memdev
	var devErr error
	if src.Layout == nil || src.PID != 0 && src.MemoryFile == "" {
		dev, devErr = ramBackend(ctx, mon, src.MemoryBackend)
	}
	var b backing
	var err error
	if src.MemoryFile != "" {
		if b, err = openFileBacking(src.MemoryFile); err != nil {
			return nil, nil, err
		}
	} else {
		if devErr != nil {
			return nil, nil, devErr
		}
		hva, err := qemuRAMAddress(ctx, mon, src.PID, dev)
		if err != nil {
			return nil, nil, err
		}
		if b, err = openProcMemBacking(src.PID, hva, dev.Size); err != nil {
			return nil, nil, err
		}
	}
	layout := src.Layout
	if layout == nil && devErr == nil {
		if mt, err := mon.HMP(ctx, "info mtree -f"); err == nil {
			layout, _ = parseMtree(mt, dev.ID)
		}
	}
	if layout == nil {
		layout = Q35Layout(b.size())
	}
	return b, layout, nil
}

// Close releases guest memory and the monitor connection.
func (g *Guest) Close() error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var errs []error
	if g.mem != nil {
		errs = append(errs, g.mem.b.close())
		g.mem = nil
	}
	if g.ownMon && g.mon != nil {
		errs = append(errs, g.mon.Close())
	}
	g.mon = nil
	return errors.Join(errs...)
}

var errClosed = errors.New("introspect: guest closed")

// Kernel describes the guest kernel.
func (g *Guest) Kernel() KernelInfo {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := g.k
	info := KernelInfo{Banner: g.banner, Text: k.syms.text, PagingLevels: k.levels, BTFAddress: k.btfVA,
		BTFSize: k.btfSize, SymbolSource: k.symbolSource, TextSymbols: len(k.syms.offs), CPUs: len(k.perCPU), MapleTree: k.types.hasMaple}
	if k.kallsyms != nil {
		info.KallsymsLayout = k.kallsyms.layout
	}
	return info
}

// Stats reports what the guest costs.
func (g *Guest) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats
	if g.snap != nil {
		s.Processes = len(g.snap.procs)
		s.MemoryBytes = g.snap.bytes
		for _, p := range g.snap.procs {
			s.Mappings += len(p.maps)
		}
	}
	s.ELFFiles, s.ELFBytes = len(g.elf), g.elfSize
	s.MemoryBytes += g.elfSize + int64(len(g.elf))*128 + int64(len(g.history))*64*64
	s.SharedKernelBytes = g.k.syms.bytes() + 4096
	return s
}

// readRegisters asks the monitor for vCPU registers unless recent ones are
// at hand.
func (g *Guest) readRegisters(ctx context.Context, force bool) error {
	now := g.opts.Now()
	if !force && g.regs != nil && now.Sub(g.regsAt) < g.opts.RegistersMaxAge {
		return nil
	}
	out, err := g.mon.HMP(ctx, "info registers -a")
	if err != nil {
		return fmt.Errorf("introspect: vCPU registers: %w", err)
	}
	regs, err := parseRegisters(out)
	if err != nil {
		return fmt.Errorf("introspect: %w", err)
	}
	g.regs, g.regsAt = regs, now
	return nil
}

// mapCPUs learns which guest CPU each vCPU is: a vCPU in kernel mode has its
// CPU's per-CPU area in GS base. Other vCPUs keep what was learnt before, or
// are assumed to be the CPU of the same number (QEMU and Linux both number
// CPUs in APIC order on a plain -smp topology).
func (g *Guest) mapCPUs() {
	for _, r := range g.regs {
		if r.CPL == 0 {
			for cpu, off := range g.k.perCPU {
				if off == r.GSBase {
					g.cpuOf[r.Index] = cpu
				}
			}
		}
	}
}

func (g *Guest) cpuFor(vcpu int) (int, error) {
	if cpu, ok := g.cpuOf[vcpu]; ok {
		return cpu, nil
	}
	if vcpu >= 0 && vcpu < len(g.k.perCPU) {
		return vcpu, nil
	}
	return 0, fmt.Errorf("introspect: vCPU %d: the guest has %d CPUs", vcpu, len(g.k.perCPU))
}

// running reads the task running on a guest CPU now.
func (g *Guest) running(cpu int) (taskInfo, error) {
	t := g.k.types
	if !t.hasPercpuCurrent {
		return taskInfo{}, errors.New("introspect: the guest kernel has no per-CPU current task variable in BTF or kallsyms")
	}
	task, err := g.kv.u64(g.k.perCPU[cpu] + t.percpuCurrent)
	if err != nil {
		return taskInfo{}, fmt.Errorf("introspect: CPU %d current task: %w", cpu, err)
	}
	return readTask(g.kv, t, task)
}

// VCPUs reports what runs on each vCPU now, and remembers it for Resolve.
func (g *Guest) VCPUs(ctx context.Context) (out []VCPU, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mem == nil {
		return nil, errClosed
	}
	defer guardFaults(&err)()
	if err := g.readRegisters(ctx, false); err != nil {
		return nil, err
	}
	g.mapCPUs()
	now := g.opts.Now()
	for _, r := range g.regs {
		cpu, err := g.cpuFor(r.Index)
		if err != nil {
			return nil, err
		}
		ti, err := g.running(cpu)
		if err != nil {
			return nil, err
		}
		g.remember(r.Index, now, ti)
		out = append(out, VCPU{Index: r.Index, CPU: cpu, PID: ti.tgid, TID: ti.pid, Comm: ti.comm, Kernel: ti.kthread, Registers: r, At: now})
	}
	return out, nil
}

const historyLen = 64

func (g *Guest) remember(vcpu int, at time.Time, ti taskInfo) {
	h := g.history[vcpu]
	if len(h) >= historyLen {
		h = h[1:]
	}
	g.history[vcpu] = append(h, observation{at: at, task: ti})
}

// Observe records what runs on each vCPU now without asking the monitor:
// the agent calls it when samples arrive, so that Resolve can attribute them
// to the task that ran at sample time. It costs a few memory reads a vCPU.
func (g *Guest) Observe() (err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mem == nil {
		return errClosed
	}
	defer guardFaults(&err)()
	now := g.opts.Now()
	for _, r := range g.regs {
		cpu, err := g.cpuFor(r.Index)
		if err != nil {
			return err
		}
		ti, err := g.running(cpu)
		if err != nil {
			return err
		}
		g.remember(r.Index, now, ti)
	}
	return nil
}

// Processes lists guest processes (thread groups), kernel threads included.
func (g *Guest) Processes(ctx context.Context) ([]Process, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s, err := g.current(ctx)
	if s == nil {
		return nil, err
	}
	out := make([]Process, len(s.procs))
	for i, p := range s.procs {
		out[i] = p.Process
	}
	return out, err
}

// ErrNoProcess is returned for a pid the guest does not run.
var ErrNoProcess = errors.New("no such guest process")

// Maps returns a process's memory map, as /proc/<pid>/maps shows it.
func (g *Guest) Maps(ctx context.Context, pid int) ([]Mapping, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s, err := g.current(ctx)
	if s == nil {
		return nil, err
	}
	p, ok := s.byPID[pid]
	if !ok {
		return nil, fmt.Errorf("introspect: pid %d: %w", pid, ErrNoProcess)
	}
	if p.mapsErr != nil && p.maps == nil {
		return nil, p.mapsErr
	}
	return append([]Mapping(nil), p.maps...), nil
}

// Refresh reads the process list and every memory map again.
func (g *Guest) Refresh(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, err := g.refresh(ctx)
	return err
}

// current returns a snapshot no older than MaxAge.
func (g *Guest) current(ctx context.Context) (*snapshot, error) {
	if g.mem == nil {
		return nil, errClosed
	}
	if g.snap != nil && g.opts.Now().Sub(g.snap.at) < g.opts.MaxAge {
		return g.snap, nil
	}
	return g.refresh(ctx)
}

// refresh walks the task list and every process's memory map. A walk that
// meets a torn or hostile structure is retried; what stays unreadable is
// reported while the rest is kept.
func (g *Guest) refresh(ctx context.Context) (s *snapshot, err error) {
	if g.mem == nil {
		return nil, errClosed
	}
	defer guardFaults(&err)()
	ctx, cancel := context.WithTimeout(ctx, g.opts.RefreshTimeout)
	defer cancel()
	start := g.opts.Now()
	// Kernel mappings outside the direct map (vmalloc) can change.
	g.k.mmu.flush()
	lim := g.opts.Limits
	t := g.k.types
	initTask, _ := g.k.syms.sym("init_task")
	var tasks []taskInfo
	var walkErr error
	for try := 0; try < 3; try++ {
		tasks, walkErr = walkTasks(g.kv, t, initTask, lim.MaxProcesses)
		if walkErr == nil || errors.Is(walkErr, ErrLimit) {
			break
		}
	}
	if walkErr != nil && len(tasks) == 0 {
		return nil, fmt.Errorf("introspect: %w", walkErr)
	}
	g.gen++
	s = &snapshot{at: start, gen: g.gen, byPID: make(map[int]*procState, len(tasks)), byMM: make(map[uint64]*procState, len(tasks))}
	paths := map[[2]uint64]string{}
	total := 0
	var errs []error
	if walkErr != nil {
		errs = append(errs, walkErr)
	}
	for i, ti := range tasks {
		if i%64 == 0 && ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("refresh stopped after %d of %d processes: %w", i, len(tasks), ctx.Err()))
			break
		}
		p := &procState{Process: Process{PID: ti.tgid, PPID: ti.ppid, Comm: ti.comm, Kernel: ti.kthread}, task: ti.task, mm: ti.mm}
		if _, dup := s.byPID[p.PID]; dup {
			continue
		}
		s.byPID[p.PID] = p
		s.procs = append(s.procs, p)
		s.bytes += 96 + int64(len(p.Comm))
		if p.Kernel || ti.mm == 0 {
			continue
		}
		s.byMM[ti.mm] = p
		if total >= lim.MaxTotalVMAs {
			p.mapsErr = fmt.Errorf("introspect: more than %d memory areas in the guest: %w", lim.MaxTotalVMAs, ErrLimit)
			continue
		}
		vmas, err := walkVMAs(g.kv, t, ti.mm, lim.MaxVMAs)
		if err != nil {
			// One retry: a process mapping memory right now.
			if vmas2, err2 := walkVMAs(g.kv, t, ti.mm, lim.MaxVMAs); err2 == nil {
				vmas, err = vmas2, nil
			}
		}
		if err != nil {
			p.mapsErr = fmt.Errorf("introspect: pid %d memory map: %w", p.PID, err)
			errs = append(errs, p.mapsErr)
		}
		total += len(vmas)
		p.vmas = vmas
		p.maps = g.describe(ti.mm, vmas, paths)
		s.bytes += int64(len(vmas)) * (48 + 56)
	}
	for _, path := range paths {
		s.bytes += int64(len(path)) + 16
	}
	sort.Slice(s.procs, func(i, j int) bool { return s.procs[i].PID < s.procs[j].PID })
	if head, ok := g.k.syms.sym("modules"); ok && t.hasModules {
		mods, err := walkModules(g.kv, t, head)
		if err != nil {
			errs = append(errs, fmt.Errorf("kernel modules: %w", err))
		}
		// Keep symbol tables already read for modules still loaded.
		if g.snap != nil {
			for _, m := range mods {
				if old := moduleAt(g.snap.mods, m.base); old != nil && old.addr == m.addr && old.base == m.base {
					m.syms, m.symErr, m.loaded = old.syms, old.symErr, old.loaded
				}
			}
		}
		s.mods = mods
		for _, m := range mods {
			s.bytes += 96 + int64(len(m.syms))*48
		}
	}
	g.snap = s
	g.stats.Refreshes++
	g.stats.LastRefresh = g.opts.Now().Sub(start)
	g.stats.RefreshedAt = start
	if len(errs) > 0 {
		g.stats.PartialErrors++
		err := errors.Join(errs...)
		g.stats.LastError = firstLine(err.Error())
		return s, err
	}
	return s, nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// VM flags (include/linux/mm.h), unchanged since Linux 2.6.
const (
	vmRead     = 0x1
	vmWrite    = 0x2
	vmExec     = 0x4
	vmMayShare = 0x80
)

// describe turns memory areas into /proc/<pid>/maps lines.
func (g *Guest) describe(mm uint64, vmas []vmaInfo, paths map[[2]uint64]string) []Mapping {
	t := g.k.types
	out := make([]Mapping, len(vmas))
	var startBrk, brk, startStack uint64
	startBrk, _ = g.kv.u64(mm + t.mmStartBrk)
	brk, _ = g.kv.u64(mm + t.mmBrk)
	startStack, _ = g.kv.u64(mm + t.mmStartStack)
	special, hasSpecial := g.k.syms.sym("special_mapping_vmops")
	for i, v := range vmas {
		m := Mapping{Start: v.start, End: v.end, Perms: perms(v.flags)}
		switch {
		case v.file != 0:
			m.Offset = v.pgoff * pageSize
			m.Path = g.filePath(v.file, paths)
		case hasSpecial && v.ops == special && v.private != 0:
			if name, err := g.kv.u64(v.private + t.specialName); err == nil && name != 0 {
				m.Path, _ = readCString(g.kv, name, 64)
			}
		case v.start <= brk && v.end >= startBrk:
			m.Path = "[heap]"
		case v.start <= startStack && v.end >= startStack:
			m.Path = "[stack]"
		}
		out[i] = m
	}
	return out
}

func perms(flags uint64) string {
	b := []byte("---p")
	if flags&vmRead != 0 {
		b[0] = 'r'
	}
	if flags&vmWrite != 0 {
		b[1] = 'w'
	}
	if flags&vmExec != 0 {
		b[2] = 'x'
	}
	if flags&vmMayShare != 0 {
		b[3] = 's'
	}
	return string(b)
}

// filePath returns the path of a struct file, memoised for one refresh by
// (vfsmount, dentry): every process maps the same libraries.
func (g *Guest) filePath(file uint64, paths map[[2]uint64]string) string {
	t := g.k.types
	mnt, err1 := g.kv.u64(file + t.filePath + t.pathMnt)
	dentry, err2 := g.kv.u64(file + t.filePath + t.pathDentry)
	if err1 != nil || err2 != nil {
		return "[unreadable]"
	}
	key := [2]uint64{mnt, dentry}
	if p, ok := paths[key]; ok {
		return p
	}
	p, err := dentryPath(g.kv, t, mnt, dentry, g.opts.Limits.MaxPathDepth)
	if err != nil {
		p = "[unreadable]"
	}
	paths[key] = p
	return p
}

// ParseAddress parses "0x7f..." hex or a decimal address.
func ParseAddress(s string) (uint64, error) {
	var v uint64
	var err error
	if h, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(s)), "0x"); ok {
		v, err = strconv.ParseUint(h, 16, 64)
	} else {
		v, err = strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	}
	if err != nil {
		return 0, fmt.Errorf("bad address %q: want 0x-prefixed hex or decimal", s)
	}
	return v, nil
}

// VCPUThreads maps QEMU's vCPU threads (host thread ids, what perf samples
// name) to vCPU indexes (Query.VCPU), from QMP query-cpus-fast.
func (g *Guest) VCPUThreads(ctx context.Context) (map[int]int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mon == nil {
		return nil, errClosed
	}
	raw, err := g.mon.QMP(ctx, "query-cpus-fast", nil)
	if err != nil {
		return nil, fmt.Errorf("introspect: vCPU threads: %w", err)
	}
	var cpus []struct {
		Index    int `json:"cpu-index"`
		ThreadID int `json:"thread-id"`
	}
	if err := json.Unmarshal(raw, &cpus); err != nil {
		return nil, fmt.Errorf("introspect: query-cpus-fast: %w", err)
	}
	out := make(map[int]int, len(cpus))
	for _, c := range cpus {
		out[c.ThreadID] = c.Index
	}
	return out, nil
}
