package controlplane

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// reapOrphans kills kube-apiserver and etcd processes started from assets
// whose parent is gone (they were re-parented to init): a test binary that
// crashed or was killed by its timeout cannot stop the control plane it
// started, and each leftover holds hundreds of megabytes. Processes that
// still have their parent belong to a running test and are left alone.
func reapOrphans(assets string) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	ours := map[string]bool{
		filepath.Join(assets, "kube-apiserver"): true,
		filepath.Join(assets, "etcd"):           true,
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || !ours[exe] {
			continue
		}
		if parentPID(pid) == 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// parentPID reads the ppid field of /proc/<pid>/stat ("pid (comm) state ppid ...").
func parentPID(pid int) int {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return -1
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return ppid
}
