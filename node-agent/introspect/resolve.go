package introspect

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// elfKey identifies a guest file across processes: its inode.
type elfKey struct {
	inode, ino uint64
	size       int64
}

type elfEntry struct {
	syms *elfSymbols
	err  error
	at   time.Time
	used uint64
}

// ErrNoMapping is returned for a user address no memory area of the process
// covers.
var ErrNoMapping = errors.New("address not in any memory area of the process")

// Resolve attributes a guest address: a kernel address to the kernel symbol
// holding it, a user address to the process (Query.PID, or the task running
// on Query.VCPU), the mapped file, the offset in it, and the function the
// file's own symbol table names. Warm calls (process maps and the file's
// symbols already read) cost about a microsecond and read a few words of
// guest memory at most.
func (g *Guest) Resolve(ctx context.Context, q Query) (a Attribution, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mem == nil {
		return a, errClosed
	}
	defer guardFaults(&err)()
	a = Attribution{Address: q.Address, VCPU: q.VCPU}
	kernelAddr := q.Address >= 1<<63
	// Who ran the code.
	var task *taskInfo
	switch {
	case q.PID != 0:
		a.PID, a.Via = q.PID, "pid"
	case q.VCPU >= 0:
		ti, via, err := g.taskAt(q.VCPU, q.At)
		if err != nil {
			if !kernelAddr {
				return a, err
			}
		} else {
			task = &ti
			a.PID, a.Comm, a.Via = ti.tgid, ti.comm, via
		}
	case !kernelAddr:
		return a, errors.New("introspect: a user address needs Query.PID or Query.VCPU")
	}
	if kernelAddr {
		a.Kernel, a.Path = true, "[kernel]"
		if q.Address >= g.k.syms.text {
			a.Offset = q.Address - g.k.syms.text
		}
		if name, off, ok := g.k.syms.lookup(q.Address); ok {
			a.Symbol, a.SymbolOffset = name, off
		} else if s, _ := g.current(ctx); s != nil {
			if m := moduleAt(s.mods, q.Address); m != nil {
				m.loadSymbols(g.kv, g.k.types)
				a.Path, a.Offset = "["+m.name+"]", q.Address-m.base
				if name, off, ok := m.lookup(q.Address); ok {
					a.Symbol, a.SymbolOffset = name, off
				}
			}
		}
		if a.PID != 0 && a.Comm == "" {
			if s, _ := g.current(ctx); s != nil {
				if p, ok := s.byPID[a.PID]; ok {
					a.Comm = p.Comm
				}
			}
		}
		return a, nil
	}
	s, err := g.current(ctx)
	if s == nil {
		return a, err
	}
	var p *procState
	if task != nil && task.kthread {
		// The idle task or a kernel thread borrowing the previous
		// process's address space (lazy TLB): a user address belongs to
		// that process.
		if p = s.byMM[task.activeMM]; p == nil {
			if s, err = g.refreshIfOlder(ctx, 100*time.Millisecond); s == nil {
				return a, err
			}
			p = s.byMM[task.activeMM]
		}
		if p == nil {
			return a, fmt.Errorf("introspect: user address %#x on vCPU %d, which runs kernel thread %q (pid %d) without a user address space", q.Address, q.VCPU, task.comm, task.pid)
		}
		a.PID, a.Comm = p.PID, p.Comm
	} else {
		var ok bool
		p, ok = s.byPID[a.PID]
		if !ok || (task != nil && p.mm != task.mm) {
			// A process born (or an exec) since the snapshot.
			if s, err = g.refreshIfOlder(ctx, 100*time.Millisecond); s == nil {
				return a, err
			}
			if p, ok = s.byPID[a.PID]; !ok {
				return a, fmt.Errorf("introspect: pid %d: %w", a.PID, ErrNoProcess)
			}
		}
		if p.Kernel {
			return a, fmt.Errorf("introspect: pid %d (%s) is a kernel thread: it has no user addresses", p.PID, p.Comm)
		}
	}
	a.Comm = p.Comm
	i := findMapping(p.maps, q.Address)
	if i < 0 {
		if s2, _ := g.refreshIfOlder(ctx, 100*time.Millisecond); s2 != nil && s2 != s {
			if p2, ok := s2.byPID[a.PID]; ok {
				p = p2
				i = findMapping(p.maps, q.Address)
			}
		}
		if i < 0 {
			return a, fmt.Errorf("introspect: pid %d (%s) address %#x: %w", a.PID, a.Comm, q.Address, ErrNoMapping)
		}
	}
	m := p.maps[i]
	a.Mapping = &m
	a.Path = m.Path
	a.Offset = q.Address - m.Start + m.Offset
	if v := p.vmas[i]; v.file != 0 {
		if e := g.elfFor(p, v); e != nil && e.syms != nil {
			if name, off, ok := e.syms.lookup(a.Offset); ok {
				a.Symbol, a.SymbolOffset = name, off
			}
		}
	}
	return a, nil
}

func findMapping(maps []Mapping, addr uint64) int {
	i := sort.Search(len(maps), func(i int) bool { return maps[i].End > addr })
	if i < len(maps) && maps[i].Start <= addr {
		return i
	}
	return -1
}

func (g *Guest) refreshIfOlder(ctx context.Context, age time.Duration) (*snapshot, error) {
	if g.snap != nil && g.opts.Now().Sub(g.snap.at) < age {
		return g.snap, nil
	}
	return g.refresh(ctx)
}

// taskAt returns the task that ran on vcpu at time at: an observation close
// enough to it, or what runs now.
func (g *Guest) taskAt(vcpu int, at time.Time) (taskInfo, string, error) {
	if !at.IsZero() {
		var best *observation
		var bestD time.Duration
		for i := range g.history[vcpu] {
			o := &g.history[vcpu][i]
			d := o.at.Sub(at)
			if d < 0 {
				d = -d
			}
			if d <= g.opts.SampleSkew && (best == nil || d < bestD) {
				best, bestD = o, d
			}
		}
		if best != nil {
			return best.task, "vcpu-history", nil
		}
	}
	cpu, err := g.cpuFor(vcpu)
	if err != nil {
		return taskInfo{}, "", err
	}
	ti, err := g.running(cpu)
	if err != nil {
		return taskInfo{}, "", err
	}
	// Not remembered: a stream of resolutions would push the agent's
	// Observe() records out of the history.
	return ti, "vcpu", nil
}

// elfFor returns the symbols of the file a memory area maps, reading them
// from guest memory once per file (by inode) and keeping them within
// Limits.MaxELFBytes, least recently used first out.
func (g *Guest) elfFor(p *procState, v vmaInfo) *elfEntry {
	if e, ok := p.elf[v.file]; ok {
		g.elfLRU++
		e.used = g.elfLRU
		return e
	}
	t := g.k.types
	inode, err := g.kv.u64(v.file + t.fileInode)
	if err != nil || inode < kernelSpace {
		return nil
	}
	ino, _ := g.kv.u64(inode + t.inodeIno)
	size, _ := g.kv.u64(inode + t.inodeSize)
	key := elfKey{inode: inode, ino: ino, size: int64(size)}
	now := g.opts.Now()
	e, ok := g.elf[key]
	if !ok || (e.err != nil && now.Sub(e.at) > g.opts.MaxAge) {
		e = g.loadELF(p, v, int64(size))
		if old, ok := g.elf[key]; ok && old.syms != nil {
			g.elfSize -= old.syms.bytes
		}
		g.elf[key] = e
		if e.syms != nil {
			g.elfSize += e.syms.bytes
		}
		g.evictELF()
	}
	g.elfLRU++
	e.used = g.elfLRU
	if p.elf == nil {
		p.elf = map[uint64]*elfEntry{}
	}
	p.elf[v.file] = e
	return e
}

func (g *Guest) loadELF(p *procState, v vmaInfo, size int64) *elfEntry {
	e := &elfEntry{at: g.opts.Now()}
	lim := g.opts.Limits
	if size <= 0 || size > lim.MaxELFFileSize {
		e.err = fmt.Errorf("file size %d out of range", size)
		return e
	}
	mapping, err := g.kv.u64(v.file + g.k.types.fileMapping)
	if err != nil {
		e.err = err
		return e
	}
	f := &guestFile{pc: g.pc, mem: g.mem, mapping: mapping, size: size}
	// The process's own mappings of the file back up the page cache.
	if pgd, err := g.kv.u64(p.mm + g.k.types.mmPGD); err == nil {
		if pa, err := g.k.mmu.translate(pgd); err == nil {
			if user, err := newMMU(g.mem, pa, g.k.levels); err == nil {
				f.user = user
				for _, w := range p.vmas {
					if w.file == v.file {
						f.views = append(f.views, w)
					}
				}
			}
		}
	}
	budget := lim.MaxELFBytes - g.elfSize
	if budget > 32<<20 {
		budget = 32 << 20
	}
	e.syms, e.err = parseELFSymbols(f, size, budget)
	return e
}

// evictELF drops least recently used symbol tables over the byte budget.
func (g *Guest) evictELF() {
	for g.elfSize > g.opts.Limits.MaxELFBytes && len(g.elf) > 0 {
		var oldest elfKey
		var min uint64 = ^uint64(0)
		for k, e := range g.elf {
			if e.used < min {
				oldest, min = k, e.used
			}
		}
		if e := g.elf[oldest]; e.syms != nil {
			g.elfSize -= e.syms.bytes
		}
		delete(g.elf, oldest)
		// Snapshots keep per-file pointers; drop them too.
		if g.snap != nil {
			for _, p := range g.snap.procs {
				p.elf = nil
			}
		}
	}
}
