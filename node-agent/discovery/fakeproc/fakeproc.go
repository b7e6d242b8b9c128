// Package fakeproc writes fixture proc trees for discovery tests: QEMU
// processes as virt-launcher runs them, with cgroup paths and named threads.
package fakeproc

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Tree is a fixture proc tree rooted at Root.
type Tree struct{ Root string }

// New makes an empty tree in dir.
func New(dir string) *Tree { return &Tree{Root: dir} }

// Process describes one fixture process.
type Process struct {
	PID       int
	Comm      string
	Args      []string
	StartTime uint64
	// Cgroup is the content of /proc/<pid>/cgroup.
	Cgroup string
	// Threads maps thread id to thread name; the main thread (PID) is
	// added with Comm when missing.
	Threads map[int]string
}

// Add writes a process.
func (t *Tree) Add(p Process) error {
	dir := filepath.Join(t.Root, strconv.Itoa(p.PID))
	if err := os.MkdirAll(filepath.Join(dir, "task"), 0o755); err != nil {
		return err
	}
	cmdline := strings.Join(p.Args, "\x00")
	if cmdline != "" {
		cmdline += "\x00"
	}
	stat := fmt.Sprintf("%d (%s) S 1 %d %d 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 %d 0 %d 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n",
		p.PID, p.Comm, p.PID, p.PID, len(p.Threads)+1, p.StartTime)
	files := map[string]string{"cmdline": cmdline, "stat": stat, "cgroup": p.Cgroup, "comm": p.Comm + "\n"}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	threads := map[int]string{p.PID: p.Comm}
	for tid, name := range p.Threads {
		threads[tid] = name
	}
	for tid, name := range threads {
		if err := t.AddThread(p.PID, tid, name); err != nil {
			return err
		}
	}
	return nil
}

// AddThread adds a thread to a process.
func (t *Tree) AddThread(pid, tid int, name string) error {
	dir := filepath.Join(t.Root, strconv.Itoa(pid), "task", strconv.Itoa(tid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "comm"), []byte(name+"\n"), 0o644)
}

// RemoveThread makes a thread exit.
func (t *Tree) RemoveThread(pid, tid int) error {
	return os.RemoveAll(filepath.Join(t.Root, strconv.Itoa(pid), "task", strconv.Itoa(tid)))
}

// Remove makes a process exit.
func (t *Tree) Remove(pid int) error {
	return os.RemoveAll(filepath.Join(t.Root, strconv.Itoa(pid)))
}

// QEMU describes a virt-launcher QEMU process.
type QEMU struct {
	PID       int
	StartTime uint64
	Namespace string
	Name      string
	// PodUID, when set, puts the process in a systemd-style kubepods
	// cgroup of that pod (SystemdCgroup) or a cgroupfs one.
	PodUID        string
	CgroupfsStyle bool
	// VCPUs is the number of vCPU threads; their TIDs are PID+1..PID+n.
	VCPUs int
	// Accel is "KVM" (default) or "TCG".
	Accel string
}

// AddQEMU writes a QEMU process with vCPU threads and the helper threads
// QEMU and KVM also run (which are not vCPUs). It returns the vCPU TIDs.
func (t *Tree) AddQEMU(q QEMU) ([]int, error) {
	accel := q.Accel
	if accel == "" {
		accel = "KVM"
	}
	threads := map[int]string{
		q.PID + 100: "call_rcu",
		q.PID + 101: "IO mon_iothread",
		q.PID + 102: "kvm-nx-lpage-re",
		q.PID + 103: "worker",
	}
	var tids []int
	for i := 0; i < q.VCPUs; i++ {
		tid := q.PID + 1 + i
		threads[tid] = fmt.Sprintf("CPU %d/%s", i, accel)
		tids = append(tids, tid)
	}
	cg := "0::/\n"
	if q.PodUID != "" {
		if q.CgroupfsStyle {
			cg = fmt.Sprintf("12:pids:/kubepods/burstable/pod%s/0123456789abcdef\n11:memory:/kubepods/burstable/pod%s/0123456789abcdef\n", q.PodUID, q.PodUID)
		} else {
			u := strings.ReplaceAll(q.PodUID, "-", "_")
			cg = fmt.Sprintf("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/cri-containerd-0123456789abcdef.scope\n", u)
		}
	}
	err := t.Add(Process{
		PID:       q.PID,
		Comm:      "qemu-kvm",
		StartTime: q.StartTime,
		Args: []string{
			"/usr/libexec/qemu-kvm", "-name",
			fmt.Sprintf("guest=%s_%s,debug-threads=on", q.Namespace, q.Name),
			"-S", "-object", "secret,id=masterKey0,format=raw", "-machine", "pc-q35-rhel9.2.0,usb=off",
			"-accel", strings.ToLower(accel), "-smp", strconv.Itoa(q.VCPUs),
		},
		Cgroup:  cg,
		Threads: threads,
	})
	return tids, err
}
