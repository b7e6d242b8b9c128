package controlplane

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParentPID(t *testing.T) {
	if got := parentPID(os.Getpid()); got != os.Getppid() {
		t.Errorf("parentPID(self) = %d, want %d", got, os.Getppid())
	}
	if got := parentPID(-5); got != -1 {
		t.Errorf("parentPID(-5) = %d, want -1", got)
	}
}

// A child of this test is not an orphan: reaping must leave it alone even
// when it runs one of the control plane's binaries.
func TestReapLeavesOwnedProcesses(t *testing.T) {
	dir := t.TempDir()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	fake := dir + "/etcd"
	if err := os.WriteFile(fake, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(fake, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	reapOrphans(dir)
	time.Sleep(100 * time.Millisecond)
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	if i := strings.LastIndexByte(string(stat), ')'); i < 0 || strings.Fields(string(stat)[i+1:])[0] == "Z" {
		t.Fatal("reapOrphans killed a process whose parent is alive")
	}
}
