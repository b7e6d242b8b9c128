// Package discovery finds the VMIs running on this node and, for each, the
// QEMU process and its vCPU threads, by reading a proc tree (the host's
// /proc mounted at /host/proc in the agent pod).
//
// libvirt in KubeVirt's virt-launcher starts QEMU with
// `-name guest=<namespace>_<vmi>,debug-threads=on`; with debug-threads each
// vCPU thread is named "CPU <n>/KVM" ("CPU <n>/TCG" without hardware
// virtualisation). The pod UID in the process's cgroup path tells a
// migration's source and target QEMU apart when both briefly share a name.
package discovery

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// VMIRef names a VMI.
type VMIRef struct {
	Namespace string
	Name      string
}

func (r VMIRef) String() string { return r.Namespace + "/" + r.Name }

// VCPU is one vCPU thread of a QEMU process.
type VCPU struct {
	// Index is n in "CPU n/KVM".
	Index int
	// TID is the thread id in the proc tree's pid namespace.
	TID int
}

// Process is a QEMU process that runs a named guest.
type Process struct {
	PID int
	// StartTime is field 22 of /proc/<pid>/stat (clock ticks after boot);
	// with PID it identifies the process across PID reuse.
	StartTime uint64
	// VMI is parsed from `-name guest=<namespace>_<name>`.
	VMI VMIRef
	// PodUID is the Kubernetes pod UID found in the process's cgroup path,
	// "" when the process does not run in a pod.
	PodUID string
	// Accelerator is "KVM" or "TCG", from the vCPU thread names.
	Accelerator string
	// VCPUs sorted by Index.
	VCPUs []VCPU
}

// Scanner reads QEMU processes and their threads from a proc tree.
type Scanner struct {
	// ProcRoot is the proc tree, e.g. /host/proc.
	ProcRoot string
}

// ErrNoProcess means the process exited or never existed.
var ErrNoProcess = errors.New("process not found")

// Scan lists every process in the proc tree that runs a guest named by
// libvirt's `-name guest=...`, with its vCPU threads. Processes that vanish
// while being read are skipped.
func (s Scanner) Scan() ([]Process, error) {
	entries, err := os.ReadDir(s.ProcRoot)
	if err != nil {
		return nil, fmt.Errorf("discovery: read proc root %s: %w (set --proc-root to the host's /proc)", s.ProcRoot, err)
	}
	var procs []Process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		p, ok, err := s.Process(pid)
		if err != nil {
			if errors.Is(err, ErrNoProcess) {
				continue
			}
			return nil, err
		}
		if ok {
			procs = append(procs, p)
		}
	}
	slices.SortFunc(procs, func(a, b Process) int { return a.PID - b.PID })
	return procs, nil
}

// Process reads one process. ok is false when it does not run a named
// guest (not QEMU, or QEMU without `-name guest=`).
func (s Scanner) Process(pid int) (p Process, ok bool, err error) {
	dir := filepath.Join(s.ProcRoot, strconv.Itoa(pid))
	cmdline, err := readSmall(filepath.Join(dir, "cmdline"), maxCmdline)
	if err != nil {
		return Process{}, false, notFound(err)
	}
	vmi, ok := ParseGuestName(splitCmdline(cmdline))
	if !ok {
		return Process{}, false, nil
	}
	p = Process{PID: pid, VMI: vmi}
	stat, err := readSmall(filepath.Join(dir, "stat"), 4096)
	if err != nil {
		return Process{}, false, notFound(err)
	}
	if p.StartTime, err = ParseStartTime(stat); err != nil {
		return Process{}, false, fmt.Errorf("discovery: %s/stat: %w", dir, err)
	}
	if cg, err := readSmall(filepath.Join(dir, "cgroup"), 64<<10); err == nil {
		p.PodUID = ParsePodUID(cg)
	}
	p.VCPUs, p.Accelerator, err = s.VCPUs(pid)
	if err != nil {
		return Process{}, false, err
	}
	return p, true, nil
}

// VCPUs lists the vCPU threads of a process, sorted by index, and the
// accelerator their names show.
func (s Scanner) VCPUs(pid int) ([]VCPU, string, error) {
	taskDir := filepath.Join(s.ProcRoot, strconv.Itoa(pid), "task")
	tasks, err := os.ReadDir(taskDir)
	if err != nil {
		return nil, "", notFound(err)
	}
	var vcpus []VCPU
	accel := ""
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		comm, err := readSmall(filepath.Join(taskDir, t.Name(), "comm"), 64)
		if err != nil {
			continue // the thread exited between readdir and read
		}
		idx, a, ok := ParseVCPUComm(string(bytes.TrimRight(comm, "\n")))
		if !ok {
			continue
		}
		vcpus = append(vcpus, VCPU{Index: idx, TID: tid})
		accel = a
	}
	slices.SortFunc(vcpus, func(a, b VCPU) int {
		if a.Index != b.Index {
			return a.Index - b.Index
		}
		return a.TID - b.TID
	})
	return vcpus, accel, nil
}

// TaskIDs lists the thread ids of a process: cheap enough to run every
// few seconds per QEMU to notice vCPU threads coming and going without
// reading every thread's name again.
func (s Scanner) TaskIDs(pid int) ([]int, error) {
	f, err := os.Open(filepath.Join(s.ProcRoot, strconv.Itoa(pid), "task"))
	if err != nil {
		return nil, notFound(err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, notFound(err)
	}
	ids := make([]int, 0, len(names))
	for _, n := range names {
		if id, err := strconv.Atoi(n); err == nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// ThreadCount is how many threads a process has, from the link count of
// its task directory (the kernel sets it to threads + 2): one stat
// instead of a directory listing, to check known processes cheaply.
func (s Scanner) ThreadCount(pid int) (int, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(s.ProcRoot, strconv.Itoa(pid), "task"), &st); err != nil {
		return 0, notFound(err)
	}
	return int(st.Nlink) - 2, nil
}

// StartTime reads a process's start time, to tell a live process from a
// new one that reused its PID.
func (s Scanner) StartTime(pid int) (uint64, error) {
	stat, err := readSmall(filepath.Join(s.ProcRoot, strconv.Itoa(pid), "stat"), 4096)
	if err != nil {
		return 0, notFound(err)
	}
	return ParseStartTime(stat)
}

const maxCmdline = 256 << 10

func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("%w: %w", ErrNoProcess, err)
	}
	return err
}

// readSmall reads at most max bytes of a proc file.
func readSmall(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max))
}

func splitCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

// ParseGuestName finds libvirt's `-name guest=<namespace>_<name>[,opts]`
// on a QEMU command line. libvirt escapes a comma in the value as ",,".
// Kubernetes namespaces cannot contain '_', so the first '_' separates
// namespace and name.
func ParseGuestName(args []string) (VMIRef, bool) {
	for i, a := range args {
		var val string
		switch {
		case a == "-name" || a == "--name":
			if i+1 >= len(args) {
				return VMIRef{}, false
			}
			val = args[i+1]
		case strings.HasPrefix(a, "-name="):
			val = strings.TrimPrefix(a, "-name=")
		default:
			continue
		}
		guest := ""
		for _, opt := range splitQEMUOpts(val) {
			if g, ok := strings.CutPrefix(opt, "guest="); ok {
				guest = g
			} else if guest == "" && !strings.Contains(opt, "=") {
				// `-name foo` is shorthand for `-name guest=foo`.
				guest = opt
			}
		}
		ns, name, ok := strings.Cut(guest, "_")
		if !ok || ns == "" || name == "" {
			return VMIRef{}, false
		}
		return VMIRef{Namespace: ns, Name: name}, true
	}
	return VMIRef{}, false
}

// splitQEMUOpts splits a QEMU option string at single commas; ",," is an
// escaped comma.
func splitQEMUOpts(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

// podUIDPattern matches a pod UID in a cgroup path, in the cgroupfs form
// (/kubepods/burstable/pod<uid>/...) and the systemd form
// (kubepods-burstable-pod<uid with _>.slice).
var podUIDPattern = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)

// ParsePodUID returns the pod UID in /proc/<pid>/cgroup, or "".
func ParsePodUID(cgroup []byte) string {
	m := podUIDPattern.FindSubmatch(cgroup)
	if m == nil {
		return ""
	}
	return strings.ReplaceAll(string(m[1]), "_", "-")
}

// ParseVCPUComm recognises a vCPU thread name, "CPU <n>/KVM" or
// "CPU <n>/TCG" (QEMU with debug-threads=on).
func ParseVCPUComm(comm string) (index int, accel string, ok bool) {
	rest, ok := strings.CutPrefix(comm, "CPU ")
	if !ok {
		return 0, "", false
	}
	num, accel, ok := strings.Cut(rest, "/")
	if !ok || (accel != "KVM" && accel != "TCG") {
		return 0, "", false
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 {
		return 0, "", false
	}
	return n, accel, true
}

// ParseStartTime reads field 22 (starttime) of /proc/<pid>/stat. The comm
// field (2) may hold spaces and parentheses, so parsing starts after the
// last ')'.
func ParseStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no comm field")
	}
	fields := strings.Fields(string(stat[i+1:]))
	// fields[0] is field 3 (state); starttime is field 22.
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("stat: %d fields after comm, want more than %d", len(fields), idx)
	}
	v, err := strconv.ParseUint(fields[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat: starttime %q: %w", fields[idx], err)
	}
	return v, nil
}
