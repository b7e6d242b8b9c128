package introspect

import (
	"errors"
	"fmt"
	"strings"
)

// Walkers over guest kernel data structures. Guest memory belongs to the
// tenant, and the guest keeps running while we read, so every walker
// assumes the worst: lists may loop, counts may be absurd, pointers may lead
// to unmapped or reused memory. Each walk is bounded by Limits, checks what it
// reads for consistency, and returns an error rather than spinning.

// kmem reads guest kernel virtual memory.
type kmem interface {
	read(p []byte, va uint64) error
	u64(va uint64) (uint64, error)
	u32(va uint64) (uint32, error)
}

// Limits bound every walk over guest memory.
type Limits struct {
	// MaxProcesses bounds the task list walk (default 65536).
	MaxProcesses int
	// MaxVMAs bounds the memory areas read for one process (default
	// 65536, the kernel's default max_map_count is 65530).
	MaxVMAs int
	// MaxTotalVMAs bounds the memory areas kept for the whole guest
	// (default 1,000,000).
	MaxTotalVMAs int
	// MaxPathDepth bounds the dentry walk of one file path (default 256).
	MaxPathDepth int
	// MaxELFBytes bounds the symbol tables kept for guest libraries and
	// executables (default 64 MiB).
	MaxELFBytes int64
	// MaxELFFileSize bounds the size of one ELF file read from the page
	// cache for its symbols (default 512 MiB).
	MaxELFFileSize int64
}

func (l Limits) withDefaults() Limits {
	if l.MaxProcesses <= 0 {
		l.MaxProcesses = 65536
	}
	if l.MaxVMAs <= 0 {
		l.MaxVMAs = 65536
	}
	if l.MaxTotalVMAs <= 0 {
		l.MaxTotalVMAs = 1000000
	}
	if l.MaxPathDepth <= 0 {
		l.MaxPathDepth = 256
	}
	if l.MaxELFBytes <= 0 {
		l.MaxELFBytes = 64 << 20
	}
	if l.MaxELFFileSize <= 0 {
		l.MaxELFFileSize = 512 << 20
	}
	return l
}

// ErrLimit is wrapped by errors from walks that hit a Limits bound.
var ErrLimit = errors.New("introspection limit reached")

// ErrInconsistent is wrapped by errors from walks that found guest data
// structures that do not hold together: a torn read of a structure the
// guest was changing, or hostile memory.
var ErrInconsistent = errors.New("inconsistent guest data")

const (
	pidMax    = 4 << 20 // PID_MAX_LIMIT
	pfKthread = 0x00200000
	// kernelSpace is the lowest kernel address with 5-level paging (the
	// 4-level kernel half, 0xffff800000000000 up, lies inside it).
	kernelSpace = 0xff00000000000000
	// userTop bounds user addresses (57-bit with 5-level paging).
	userTop = 1 << 56
)

// taskInfo is one task read from the task list.
type taskInfo struct {
	task     uint64
	pid      int
	tgid     int
	ppid     int
	comm     string
	mm       uint64
	flags    uint32
	kthread  bool
	activeMM uint64
}

// readTask reads the fields of one task_struct.
func readTask(m kmem, t *kernelTypes, task uint64) (taskInfo, error) {
	ti := taskInfo{task: task}
	if task < kernelSpace {
		return ti, fmt.Errorf("task pointer %#x is not a kernel address: %w", task, ErrInconsistent)
	}
	pid, err := m.u32(task + t.taskPID)
	if err != nil {
		return ti, err
	}
	tgid, err := m.u32(task + t.taskTGID)
	if err != nil {
		return ti, err
	}
	if int32(pid) < 0 || pid > pidMax || int32(tgid) < 0 || tgid > pidMax {
		return ti, fmt.Errorf("task %#x: pid %d / tgid %d out of range: %w", task, int32(pid), int32(tgid), ErrInconsistent)
	}
	ti.pid, ti.tgid = int(pid), int(tgid)
	var comm [64]byte
	n := t.taskCommLen
	if err := m.read(comm[:n], task+t.taskComm); err != nil {
		return ti, err
	}
	ti.comm = cString(comm[:n])
	if ti.mm, err = m.u64(task + t.taskMM); err != nil {
		return ti, err
	}
	if t.taskActiveMM != 0 {
		if ti.activeMM, err = m.u64(task + t.taskActiveMM); err != nil {
			return ti, err
		}
	}
	if ti.flags, err = m.u32(task + t.taskFlags); err != nil {
		return ti, err
	}
	// Kernel threads and the idle tasks; a user process whose mm is
	// already gone (exiting, zombie) is not one.
	ti.kthread = ti.flags&pfKthread != 0 || ti.pid == 0
	parent, err := m.u64(task + t.taskRealParent)
	if err != nil {
		return ti, err
	}
	if parent != 0 && parent != task {
		pp, err := m.u32(parent + t.taskTGID)
		if err != nil {
			return ti, fmt.Errorf("task %#x: parent %#x: %w", task, parent, err)
		}
		if pp <= pidMax {
			ti.ppid = int(pp)
		}
	}
	return ti, nil
}

// cString returns the bytes up to the first NUL, with non-printable bytes
// escaped so that guest-chosen names cannot inject control characters.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			b = b[:i]
			break
		}
	}
	clean := true
	for _, c := range b {
		if c < 0x20 || c == 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return string(b)
	}
	var sb strings.Builder
	for _, c := range b {
		if c < 0x20 || c == 0x7f {
			fmt.Fprintf(&sb, "\\x%02x", c)
		} else {
			sb.WriteByte(c)
		}
	}
	return sb.String()
}

// walkTasks walks the task list from init_task (excluded: it is the idle
// task, pid 0) and returns the thread group leaders it links.
func walkTasks(m kmem, t *kernelTypes, initTask uint64, max int) ([]taskInfo, error) {
	head := initTask + t.taskTasks
	next, err := m.u64(head + t.listNext)
	if err != nil {
		return nil, fmt.Errorf("init_task.tasks: %w", err)
	}
	var out []taskInfo
	seen := make(map[uint64]struct{}, 256)
	for next != head {
		if len(out) >= max {
			return out, fmt.Errorf("task list longer than %d entries: %w", max, ErrLimit)
		}
		if next < kernelSpace || next < t.taskTasks {
			return out, fmt.Errorf("task list link %#x is not a kernel address: %w", next, ErrInconsistent)
		}
		if _, dup := seen[next]; dup {
			return out, fmt.Errorf("task list loops at %#x without returning to init_task: %w", next, ErrInconsistent)
		}
		seen[next] = struct{}{}
		task := next - t.taskTasks
		ti, err := readTask(m, t, task)
		if err != nil {
			return out, fmt.Errorf("task list: %w", err)
		}
		out = append(out, ti)
		if next, err = m.u64(next + t.listNext); err != nil {
			return out, fmt.Errorf("task list: task %#x: %w", task, err)
		}
	}
	return out, nil
}

// vmaInfo is one memory area.
type vmaInfo struct {
	start, end uint64
	flags      uint64
	pgoff      uint64
	file       uint64
	ops        uint64
	private    uint64
}

// readVMA reads one vm_area_struct.
func readVMA(m kmem, t *kernelTypes, vma uint64) (vmaInfo, error) {
	var v vmaInfo
	var err error
	fields := []struct {
		dst *uint64
		off uint64
	}{
		{&v.start, t.vmaStart}, {&v.end, t.vmaEnd}, {&v.flags, t.vmaFlags}, {&v.pgoff, t.vmaPgoff},
		{&v.file, t.vmaFile}, {&v.ops, t.vmaOps}, {&v.private, t.vmaPrivate},
	}
	for _, f := range fields {
		if *f.dst, err = m.u64(vma + f.off); err != nil {
			return v, fmt.Errorf("vm_area_struct %#x: %w", vma, err)
		}
	}
	if v.start >= v.end || v.end > userTop || v.start&0xfff != 0 || v.end&0xfff != 0 {
		return v, fmt.Errorf("vm_area_struct %#x: bad range %#x-%#x: %w", vma, v.start, v.end, ErrInconsistent)
	}
	return v, nil
}

// walkVMAs returns a process's memory areas in address order.
func walkVMAs(m kmem, t *kernelTypes, mm uint64, max int) ([]vmaInfo, error) {
	if t.hasMaple {
		root, err := m.u64(mm + t.mmMT + t.mtRoot)
		if err != nil {
			return nil, fmt.Errorf("mm %#x: maple tree root: %w", mm, err)
		}
		w := mapleWalker{m: m, t: t, max: max, maxNodes: max/2 + 64}
		err = w.walk(root)
		return w.out, err
	}
	return walkVMAList(m, t, mm, max)
}

// walkVMAList follows mm->mmap and vm_next (kernels before 6.1).
func walkVMAList(m kmem, t *kernelTypes, mm uint64, max int) ([]vmaInfo, error) {
	vma, err := m.u64(mm + t.mmMmap)
	if err != nil {
		return nil, fmt.Errorf("mm %#x: mmap: %w", mm, err)
	}
	var out []vmaInfo
	for vma != 0 {
		if len(out) >= max {
			return out, fmt.Errorf("mm %#x: more than %d memory areas: %w", mm, max, ErrLimit)
		}
		v, err := readVMA(m, t, vma)
		if err != nil {
			return out, err
		}
		// Sorted and disjoint: this also rules out cycles.
		if n := len(out); n > 0 && v.start < out[n-1].end {
			return out, fmt.Errorf("mm %#x: memory areas out of order at %#x: %w", mm, v.start, ErrInconsistent)
		}
		out = append(out, v)
		if vma, err = m.u64(vma + t.vmaNext); err != nil {
			return out, err
		}
	}
	return out, nil
}

// Maple tree encoding (include/linux/maple_tree.h): a node pointer carries
// the node type in bits 3-6; nodes are aligned to their size (256 bytes);
// tagged internal entries end in binary 10.
const (
	mapleTypeShift = 3
	mapleTypeMask  = 0xf
	mapleHeightMax = 31
)

func xaIsInternal(e uint64) bool { return e&3 == 2 }
func xaIsNode(e uint64) bool     { return xaIsInternal(e) && e > 4096 }

type mapleWalker struct {
	m        kmem
	t        *kernelTypes
	max      int
	maxNodes int
	nodes    int
	out      []vmaInfo
	buf      [4096]byte
}

func (w *mapleWalker) walk(root uint64) error {
	if root == 0 {
		return nil
	}
	if !xaIsNode(root) {
		return fmt.Errorf("maple tree root %#x is not a node: %w", root, ErrInconsistent)
	}
	return w.node(root, 0, ^uint64(0), 0)
}

func (w *mapleWalker) node(enode, min, max uint64, depth int) error {
	t := w.t
	if depth > mapleHeightMax {
		return fmt.Errorf("maple tree deeper than %d: %w", mapleHeightMax, ErrInconsistent)
	}
	if w.nodes++; w.nodes > w.maxNodes {
		return fmt.Errorf("maple tree has more than %d nodes: %w", w.maxNodes, ErrLimit)
	}
	node := enode &^ (t.mapleNodeSize - 1)
	if node < kernelSpace {
		return fmt.Errorf("maple node %#x is not a kernel address: %w", node, ErrInconsistent)
	}
	typ := (enode >> mapleTypeShift) & mapleTypeMask
	buf := w.buf[:t.mapleNodeSize]
	if err := w.m.read(buf, node); err != nil {
		return fmt.Errorf("maple node %#x: %w", node, err)
	}
	var pivOff, slotOff, metaOff uint64
	var npiv int
	switch typ {
	case t.mapleLeaf64, t.mapleRange64:
		pivOff, slotOff, metaOff, npiv = t.mr64Pivot, t.mr64Slot, t.mr64Meta, t.rangePivots
	case t.mapleARange64:
		pivOff, slotOff, metaOff, npiv = t.ma64Pivot, t.ma64Slot, t.ma64Meta, t.arangePivots
	default:
		return fmt.Errorf("maple node %#x has type %d: %w", node, typ, ErrInconsistent)
	}
	leaf := typ == t.mapleLeaf64
	if slotOff+8*uint64(npiv+1) > uint64(len(buf)) || pivOff+8*uint64(npiv) > uint64(len(buf)) {
		return fmt.Errorf("maple node layout exceeds the node size: %w", ErrInconsistent)
	}
	pivot := func(i int) uint64 { return le64(buf[pivOff+8*uint64(i):]) }
	// The number of used slots, as ma_data_end computes it.
	var end int
	metaEnd := func() int {
		if metaOff+t.metaEnd < uint64(len(buf)) {
			return int(buf[metaOff+t.metaEnd])
		}
		return npiv
	}
	switch {
	case typ == t.mapleARange64:
		end = metaEnd()
	case pivot(npiv-1) == 0:
		end = metaEnd()
	case pivot(npiv-1) == max:
		end = npiv - 1
	default:
		end = npiv
	}
	if end > npiv {
		return fmt.Errorf("maple node %#x: end %d beyond %d slots: %w", node, end, npiv+1, ErrInconsistent)
	}
	lo := min
	for i := 0; i <= end; i++ {
		hi := max
		if i < npiv {
			hi = pivot(i)
			// The last used slot's pivot may be left 0: it ends at the
			// node's max.
			if hi == 0 && i == end && i > 0 {
				hi = max
			}
		}
		if hi < lo || hi > max {
			return fmt.Errorf("maple node %#x: pivot %d (%#x) outside %#x-%#x: %w", node, i, hi, lo, max, ErrInconsistent)
		}
		entry := le64(buf[slotOff+8*uint64(i):])
		switch {
		case entry == 0:
		case leaf:
			if xaIsInternal(entry) {
				break // reserved/zero entries
			}
			if len(w.out) >= w.max {
				return fmt.Errorf("more than %d memory areas: %w", w.max, ErrLimit)
			}
			v, err := readVMA(w.m, t, entry)
			if err != nil {
				return err
			}
			if v.start < lo || v.end-1 > hi {
				return fmt.Errorf("memory area %#x-%#x outside its maple slot %#x-%#x: %w", v.start, v.end, lo, hi, ErrInconsistent)
			}
			if n := len(w.out); n > 0 && v.start < w.out[n-1].end {
				return fmt.Errorf("memory areas overlap at %#x: %w", v.start, ErrInconsistent)
			}
			w.out = append(w.out, v)
		default:
			if !xaIsNode(entry) && entry&3 != 0 && (entry>>mapleTypeShift)&mapleTypeMask == 0 {
				return fmt.Errorf("maple node %#x: bad child %#x: %w", node, entry, ErrInconsistent)
			}
			if err := w.node(entry, lo, hi, depth+1); err != nil {
				return err
			}
			// The recursion reused the buffer: read this node again.
			if err := w.m.read(buf, node); err != nil {
				return fmt.Errorf("maple node %#x: %w", node, err)
			}
		}
		if hi >= max {
			break
		}
		lo = hi + 1
	}
	return nil
}

// dentryPath builds the path of (vfsmount, dentry) as d_path does, crossing
// mount points up to the root of the mount namespace. Deleted files get
// " (deleted)" as in /proc/<pid>/maps.
func dentryPath(m kmem, t *kernelTypes, vfsmnt, dentry uint64, maxDepth int) (string, error) {
	if vfsmnt < kernelSpace || dentry < kernelSpace {
		return "", fmt.Errorf("path (%#x, %#x): not kernel pointers: %w", vfsmnt, dentry, ErrInconsistent)
	}
	mount := vfsmnt - t.mountMnt
	var parts []string
	deleted := false
	first := true
	total := 0
	for steps := 0; ; steps++ {
		if steps > maxDepth {
			return "", fmt.Errorf("path deeper than %d components: %w", maxDepth, ErrLimit)
		}
		root, err := m.u64(mount + t.mountMnt + t.vfsmountRoot)
		if err != nil {
			return "", err
		}
		parent, err := m.u64(dentry + t.dentryParent)
		if err != nil {
			return "", err
		}
		if first {
			first = false
			pprev, err := m.u64(dentry + t.dentryHashPprev)
			if err != nil {
				return "", err
			}
			deleted = pprev == 0 && parent != dentry
		}
		if dentry == root || dentry == parent {
			mparent, err := m.u64(mount + t.mountParent)
			if err != nil {
				return "", err
			}
			if mparent == mount || mparent == 0 || dentry != root {
				break
			}
			if dentry, err = m.u64(mount + t.mountMountpoint); err != nil {
				return "", err
			}
			if mparent < kernelSpace || dentry < kernelSpace {
				return "", fmt.Errorf("mount %#x: bad parent: %w", mount, ErrInconsistent)
			}
			mount = mparent
			continue
		}
		name, err := qstrName(m, t, dentry+t.dentryName)
		if err != nil {
			return "", err
		}
		if total += len(name) + 1; total > 4096 {
			return "", fmt.Errorf("path longer than PATH_MAX: %w", ErrLimit)
		}
		parts = append(parts, name)
		if parent < kernelSpace {
			return "", fmt.Errorf("dentry %#x: parent %#x: %w", dentry, parent, ErrInconsistent)
		}
		dentry = parent
	}
	var sb strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		sb.WriteByte('/')
		sb.WriteString(parts[i])
	}
	if sb.Len() == 0 {
		sb.WriteByte('/')
	}
	if deleted {
		sb.WriteString(" (deleted)")
	}
	return sb.String(), nil
}

// qstrName reads a struct qstr's name (at most NAME_MAX bytes).
func qstrName(m kmem, t *kernelTypes, qstr uint64) (string, error) {
	n, err := m.u32(qstr + t.qstrLen)
	if err != nil {
		return "", err
	}
	if n == 0 || n > 255 {
		return "", fmt.Errorf("dentry name length %d: %w", n, ErrInconsistent)
	}
	p, err := m.u64(qstr + t.qstrName)
	if err != nil {
		return "", err
	}
	var b [256]byte
	if err := m.read(b[:n], p); err != nil {
		return "", err
	}
	return cString(b[:n]), nil
}

// readCString reads a NUL-terminated kernel string of at most max bytes.
func readCString(m kmem, va uint64, max int) (string, error) {
	b := make([]byte, max)
	// Read up to the end of the page first: the rest may be unmapped.
	n := int(pageSize - va&0xfff)
	if n > max {
		n = max
	}
	if err := m.read(b[:n], va); err != nil {
		return "", err
	}
	for i := 0; i < n; i++ {
		if b[i] == 0 {
			return cString(b[:i]), nil
		}
	}
	if n < max {
		if err := m.read(b[n:], va+uint64(n)); err != nil {
			return cString(b[:n]), nil
		}
	}
	return cString(b), nil
}
