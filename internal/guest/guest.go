// Package guest boots the sidewatch test guest (hack/guest) under QEMU the
// way KubeVirt's virt-launcher runs it: `-name guest=<namespace>_<vmi>,
// debug-threads=on`, RAM in a shared memory backend file, a QMP socket. Here
// the accelerator is TCG (no hardware virtualisation on the development
// machines), so vCPU threads are named "CPU n/TCG" instead of "CPU n/KVM".
//
// Tests of the node agent, the eBPF programs and introspection share it.
package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sidewatch/sidewatch/internal/controlplane"
)

// Artifacts are the files hack/guest/build.sh produces.
type Artifacts struct {
	Dir        string
	VMLinuz    string // bzImage: KASLR applies
	VMLinux    string // uncompressed ELF for PVH direct boot: no KASLR
	Initramfs  string
	LibVictim  string // the victim's shared library, for symbol offsets
	Victim     string // the victim executable
	KernelName string // e.g. "linux-image-6.1.0-56-amd64 6.1.192-2"
}

// Build builds (once, cached) the guest for a Debian kernel flavour
// ("amd64", "cloud-amd64", "rt-amd64"; "" means amd64).
func Build(ctx context.Context, flavour string) (Artifacts, error) {
	root, err := controlplane.RepoRoot()
	if err != nil {
		return Artifacts{}, err
	}
	var stdout, stderr bytes.Buffer
	args := []string{filepath.Join(root, "hack", "guest", "build.sh")}
	if flavour != "" {
		args = append(args, flavour)
	}
	cmd := exec.CommandContext(ctx, "bash", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return Artifacts{}, fmt.Errorf("guest: hack/guest/build.sh: %w\n%s", err, stderr.String())
	}
	dir := strings.TrimSpace(stdout.String())
	if i := strings.LastIndexByte(dir, '\n'); i >= 0 {
		dir = dir[i+1:]
	}
	a := Artifacts{
		Dir:       dir,
		VMLinuz:   filepath.Join(dir, "vmlinuz"),
		VMLinux:   filepath.Join(dir, "vmlinux"),
		Initramfs: filepath.Join(dir, "initramfs.cpio.gz"),
		LibVictim: filepath.Join(dir, "libvictim.so"),
		Victim:    filepath.Join(dir, "victim"),
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kernel-release")); err == nil {
		a.KernelName = strings.TrimSpace(string(b))
	}
	for _, f := range []string{a.VMLinuz, a.VMLinux, a.Initramfs, a.LibVictim} {
		if _, err := os.Stat(f); err != nil {
			return Artifacts{}, fmt.Errorf("guest: build output incomplete: %w", err)
		}
	}
	return a, nil
}

// Boot selects how the kernel is started.
type Boot int

const (
	// BootPVH starts the uncompressed vmlinux directly (fastest, ~3 s;
	// the kernel is not relocated, so no KASLR).
	BootPVH Boot = iota
	// BootBzImage starts the compressed kernel through its own
	// decompressor, which applies KASLR unless NoKASLR is set (~6 s).
	BootBzImage
)

// Config describes one guest.
type Config struct {
	// Namespace and Name become `-name guest=<namespace>_<name>` as
	// libvirt names KubeVirt domains.
	Namespace, Name string
	// Flavour is the Debian kernel flavour ("" = amd64).
	Flavour string
	Boot    Boot
	// NoKASLR adds `nokaslr` to the kernel command line (bzImage only).
	NoKASLR bool
	// MemoryMiB is the guest RAM (default 256).
	MemoryMiB int
	// CPUs is the vCPU count (default 2).
	CPUs int
	// Role selects the guest's workload: "idle" (default), "attacker"
	// (a cache-thrashing spy), "busy" (a shell spin loop), "churn" (a
	// shell loop starting short-lived processes), "crowd" (200 sleeping
	// dynamically linked processes).
	Role string
	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
	// BootTimeout bounds the wait for the guest's ready marker (default 90 s).
	BootTimeout time.Duration
}

// Guest is a running QEMU guest.
type Guest struct {
	Config    Config
	Artifacts Artifacts
	// PID is QEMU's process id.
	PID int
	// QMPSocket is the QMP unix socket path.
	QMPSocket string
	// MemoryFile is the shared memory backend file holding guest RAM.
	MemoryFile string
	// Truth is what the guest printed about itself.
	Truth GroundTruth

	cmd     *exec.Cmd
	dir     string
	mu      sync.Mutex
	console bytes.Buffer
	done    chan struct{}
	waitErr error
}

// GroundTruth is what the guest's init printed on the serial console.
type GroundTruth struct {
	Role       string
	Kernel     string
	VictimPID  int
	SleeperPID int
	// Processes by pid.
	Processes map[int]Process
	// VictimMaps are the victim's /proc/<pid>/maps lines.
	VictimMaps []MapLine
	// KernelSymbols are addresses from the guest's /proc/kallsyms
	// (_stext, init_task, linux_banner, __start_BTF, __stop_BTF).
	KernelSymbols map[string]uint64
}

// Process is one guest process.
type Process struct {
	PID, PPID int
	Comm      string
}

// MapLine is one line of /proc/<pid>/maps.
type MapLine struct {
	Start, End uint64
	Perms      string
	Offset     uint64
	Path       string
}

// Start boots a guest and waits until its init has printed the ground truth.
func Start(ctx context.Context, cfg Config) (*Guest, error) {
	if cfg.Name == "" {
		return nil, errors.New("guest: Config.Name is required")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 256
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.Role == "" {
		cfg.Role = "idle"
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 90 * time.Second
	}
	art, err := Build(ctx, cfg.Flavour)
	if err != nil {
		return nil, err
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, fmt.Errorf("guest: qemu-system-x86_64 not found (Debian package qemu-system-x86): %w", err)
	}
	dir, err := os.MkdirTemp("", "sidewatch-guest-")
	if err != nil {
		return nil, err
	}
	g := &Guest{
		Config:     cfg,
		Artifacts:  art,
		QMPSocket:  filepath.Join(dir, "qmp.sock"),
		MemoryFile: fmt.Sprintf("/dev/shm/sidewatch-%s-%s-%d", cfg.Namespace, cfg.Name, time.Now().UnixNano()),
		dir:        dir,
		done:       make(chan struct{}),
	}
	kernel := art.VMLinux
	appendLine := "console=ttyS0 panic=-1 quiet sidewatch.role=" + cfg.Role
	if cfg.Boot == BootBzImage {
		kernel = art.VMLinuz
		if cfg.NoKASLR {
			appendLine += " nokaslr"
		}
	}
	mem := strconv.Itoa(cfg.MemoryMiB) + "M"
	args := []string{
		"-name", fmt.Sprintf("guest=%s_%s,debug-threads=on", cfg.Namespace, cfg.Name),
		"-accel", "tcg", "-cpu", "max",
		"-m", mem, "-smp", strconv.Itoa(cfg.CPUs),
		"-object", fmt.Sprintf("memory-backend-file,id=mem,size=%s,mem-path=%s,share=on", mem, g.MemoryFile),
		"-machine", "q35,memory-backend=mem",
		"-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-qmp", "unix:" + g.QMPSocket + ",server=on,wait=off",
		"-kernel", kernel, "-initrd", art.Initramfs, "-append", appendLine,
	}
	args = append(args, cfg.ExtraArgs...)
	g.cmd = exec.Command(qemu, args...)
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := g.cmd.StdoutPipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	var stderr bytes.Buffer
	g.cmd.Stderr = &stderr
	if err := g.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("guest: start qemu: %w", err)
	}
	g.PID = g.cmd.Process.Pid
	ready := make(chan struct{})
	go g.readConsole(stdout, ready)
	go func() {
		g.waitErr = g.cmd.Wait()
		close(g.done)
	}()

	timer := time.NewTimer(cfg.BootTimeout)
	defer timer.Stop()
	select {
	case <-ready:
	case <-g.done:
		g.cleanup()
		return nil, fmt.Errorf("guest: qemu exited before the guest was ready: %v\nstderr: %s\nconsole: %s", g.waitErr, stderr.String(), tailString(g.Console(), 3000))
	case <-timer.C:
		_ = g.Stop()
		return nil, fmt.Errorf("guest: not ready after %s; console:\n%s", cfg.BootTimeout, tailString(g.Console(), 3000))
	case <-ctx.Done():
		_ = g.Stop()
		return nil, ctx.Err()
	}
	truth, err := parseGroundTruth(g.Console())
	if err != nil {
		_ = g.Stop()
		return nil, err
	}
	g.Truth = truth
	return g, nil
}

func (g *Guest) readConsole(r io.Reader, ready chan<- struct{}) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	signalled := false
	for sc.Scan() {
		g.mu.Lock()
		if g.console.Len() < 8<<20 {
			g.console.Write(sc.Bytes())
			g.console.WriteByte('\n')
		}
		g.mu.Unlock()
		if !signalled && strings.Contains(sc.Text(), "SIDEWATCH-READY") {
			signalled = true
			close(ready)
		}
	}
}

// Console returns what the guest printed on its serial console so far.
func (g *Guest) Console() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.ReplaceAll(g.console.String(), "\r", "")
}

// Stop kills QEMU (by the PID this package started) and removes the guest's
// memory file and sockets.
func (g *Guest) Stop() error {
	if g == nil || g.cmd == nil || g.cmd.Process == nil {
		return nil
	}
	select {
	case <-g.done:
	default:
		_ = syscall.Kill(-g.PID, syscall.SIGKILL)
		select {
		case <-g.done:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("guest: qemu pid %d did not exit", g.PID)
		}
	}
	g.cleanup()
	return nil
}

func (g *Guest) cleanup() {
	os.Remove(g.MemoryFile)
	os.RemoveAll(g.dir)
}

// VCPUThreads lists QEMU's vCPU threads as tid -> comm ("CPU 0/TCG"...).
func (g *Guest) VCPUThreads() (map[int]string, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", g.PID))
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, e := range entries {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", g.PID, tid))
		if err != nil {
			continue
		}
		c := strings.TrimSpace(string(comm))
		if strings.HasPrefix(c, "CPU ") && (strings.HasSuffix(c, "/TCG") || strings.HasSuffix(c, "/KVM")) {
			out[tid] = c
		}
	}
	return out, nil
}

// ParseGroundTruth reads the ground truth from a saved console log (what
// Guest.Console returned), e.g. kept next to a memory snapshot.
func ParseGroundTruth(console string) (GroundTruth, error) {
	return parseGroundTruth(console)
}

func parseGroundTruth(console string) (GroundTruth, error) {
	begin := strings.Index(console, "SIDEWATCH-GROUND-TRUTH-BEGIN")
	end := strings.Index(console, "SIDEWATCH-GROUND-TRUTH-END")
	if begin < 0 || end < begin {
		return GroundTruth{}, fmt.Errorf("guest: no ground truth on the console:\n%s", tailString(console, 3000))
	}
	t := GroundTruth{Processes: map[int]Process{}, KernelSymbols: map[string]uint64{}}
	section := ""
	for _, line := range strings.Split(console[begin:end], "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "ps-begin":
			section = "ps"
			continue
		case f[0] == "maps-begin":
			section = "maps"
			continue
		case f[0] == "ps-end" || f[0] == "maps-end":
			section = ""
			continue
		}
		switch section {
		case "ps":
			if len(f) >= 3 {
				pid, _ := strconv.Atoi(f[0])
				ppid, _ := strconv.Atoi(f[1])
				t.Processes[pid] = Process{PID: pid, PPID: ppid, Comm: strings.Join(f[2:], " ")}
			}
		case "maps":
			if ml, ok := parseMapLine(f); ok {
				t.VictimMaps = append(t.VictimMaps, ml)
			}
		default:
			switch f[0] {
			case "role":
				t.Role = f[len(f)-1]
			case "kernel":
				t.Kernel = f[len(f)-1]
			case "victim_pid":
				t.VictimPID, _ = strconv.Atoi(f[1])
			case "sleeper_pid":
				t.SleeperPID, _ = strconv.Atoi(f[1])
			case "ksym":
				if len(f) >= 4 {
					if v, err := strconv.ParseUint(f[1], 16, 64); err == nil {
						t.KernelSymbols[f[3]] = v
					}
				}
			}
		}
	}
	if t.VictimPID == 0 || len(t.Processes) == 0 {
		return t, fmt.Errorf("guest: ground truth incomplete:\n%s", console[begin:end])
	}
	return t, nil
}

func parseMapLine(f []string) (MapLine, bool) {
	if len(f) < 5 {
		return MapLine{}, false
	}
	se := strings.SplitN(f[0], "-", 2)
	if len(se) != 2 {
		return MapLine{}, false
	}
	start, err1 := strconv.ParseUint(se[0], 16, 64)
	end, err2 := strconv.ParseUint(se[1], 16, 64)
	off, err3 := strconv.ParseUint(f[2], 16, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return MapLine{}, false
	}
	ml := MapLine{Start: start, End: end, Perms: f[1], Offset: off}
	if len(f) >= 6 {
		ml.Path = strings.Join(f[5:], " ")
	}
	return ml, true
}

func tailString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
