// Package capabilities finds out what the node agent can observe on its
// node: whether the CPU has a PMU the host can use for guest-only
// counting, which of sidewatch's events it offers and how they are
// encoded, whether branch stacks of the guest can be sampled, and the
// agent's privileges and descriptor budget. The result is the
// NodeCapabilities of the node heartbeat, which the operator reads to say
// whether a node is monitored (api/v1alpha1/heartbeat.go).
package capabilities

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/collect"
)

// Options say where to look.
type Options struct {
	// Node is this node's name.
	Node         string
	AgentVersion string
	// ProcRoot is the host's proc tree (cpuinfo, perf_event_paranoid);
	// default /proc.
	ProcRoot string
	// SysRoot is the host's sysfs (PMU devices); default /sys.
	SysRoot string
	// EBPF lists the eBPF programs the kernel loader tried, and
	// EBPFSignals the signals they provide (e.g. bus_locks from a
	// bus-lock exit hook), so a node without PMU events can still be
	// monitorable with reduced signals.
	EBPF        []v1alpha1.ProgramStatus
	EBPFSignals []v1alpha1.SignalStatus

	// open tries perf_event_open with attr on the calling thread; tests
	// replace it to play other machines.
	open func(attr probeAttr) error
	// self is the agent's own proc directory; default /proc/self.
	self string
}

// probeAttr is what the probe opens.
type probeAttr struct {
	Type        uint32
	Config      uint64
	ExcludeHost bool
	BranchStack bool
}

// CPU is what /proc/cpuinfo says about the first processor.
type CPU struct {
	Vendor                  string
	Family, Model, Stepping int
	ModelName, Microcode    string
}

func (c CPU) String() string {
	return fmt.Sprintf("%s family %d model %d", c.Vendor, c.Family, c.Model)
}

// ParseCPUInfo reads the first processor block of /proc/cpuinfo.
func ParseCPUInfo(b []byte) (CPU, error) {
	var c CPU
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			if len(seen) > 0 {
				break // end of the first processor
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		seen[k] = true
		var err error
		switch k {
		case "vendor_id":
			c.Vendor = v
		case "cpu family":
			c.Family, err = strconv.Atoi(v)
		case "model":
			c.Model, err = strconv.Atoi(v)
		case "stepping":
			c.Stepping, err = strconv.Atoi(v)
		case "model name":
			c.ModelName = v
		case "microcode":
			c.Microcode = v
		}
		if err != nil {
			return CPU{}, fmt.Errorf("cpuinfo: %s %q: %w", k, v, err)
		}
	}
	if c.Vendor == "" {
		return CPU{}, errors.New("cpuinfo: no vendor_id (not an x86 CPU?)")
	}
	return c, nil
}

// Encodings returns the event table for a CPU.
func Encodings(c CPU) (family string, encs []Encoding) {
	if f := FamilyFor(c.Vendor, c.Family, c.Model, c.Stepping); f != nil {
		return f.Name, f.Events
	}
	return "", genericEncodings(c.String())
}

// Probe finds out what this node offers.
func Probe(opts Options) (v1alpha1.NodeCapabilities, error) {
	opts = opts.withDefaults()
	caps := v1alpha1.NodeCapabilities{Node: opts.Node, AgentVersion: opts.AgentVersion, EBPF: opts.EBPF}

	cpuinfo, err := os.ReadFile(filepath.Join(opts.ProcRoot, "cpuinfo"))
	if err != nil {
		return caps, fmt.Errorf("capabilities: %w (set --proc-root to the host's /proc)", err)
	}
	cpu, err := ParseCPUInfo(cpuinfo)
	if err != nil {
		return caps, fmt.Errorf("capabilities: %w", err)
	}
	pmu := &caps.PMU
	pmu.Vendor, pmu.Family, pmu.Model, pmu.Stepping = cpu.Vendor, cpu.Family, cpu.Model, cpu.Stepping
	pmu.ModelName, pmu.Microcode = cpu.ModelName, cpu.Microcode

	caps.PerfEventParanoid = readInt(filepath.Join(opts.ProcRoot, "sys/kernel/perf_event_paranoid"), 2)
	caps.Capabilities = heldCapabilities(filepath.Join(opts.self, "status"))
	caps.FileDescriptors = fdBudget(opts.self)

	// Is there a PMU at all? sysfs lists it ("cpu", or "cpu_core" and
	// "cpu_atom" on hybrid parts); an open of cycles confirms the host
	// may use it.
	sysPMU := hasSysfsPMU(opts.SysRoot)
	cyclesErr := opts.open(probeAttr{Type: perfTypeHardware, Config: hwCycles})
	pmu.Present = cyclesErr == nil
	denied := isDenied(cyclesErr)
	switch {
	case pmu.Present:
	case denied:
		pmu.Reason = "perf_event_open denied: " + privilegeHint(caps)
	case !sysPMU:
		pmu.Reason = "no hardware counters: no CPU PMU in " + filepath.Join(opts.SysRoot, "bus/event_source/devices") + " and perf_event_open(cycles) fails with " + errnoName(cyclesErr)
	default:
		pmu.Reason = "no hardware counters: perf_event_open(cycles) fails with " + errnoName(cyclesErr)
	}

	// Guest-only counting, the mode every sidewatch counter uses.
	if pmu.Present {
		guestErr := opts.open(probeAttr{Type: perfTypeHardware, Config: hwCycles, ExcludeHost: true})
		pmu.GuestOnlyCounting = guestErr == nil
		if errors.Is(guestErr, syscall.EOPNOTSUPP) {
			pmu.GuestOwnsPMU = true
			pmu.Reason = "KVM keeps the PMU for the guests: guest-only (exclude_host) events fail with EOPNOTSUPP"
		} else if guestErr != nil {
			pmu.Reason = "guest-only counting (exclude_host) fails with " + errnoName(guestErr)
		}
		bsErr := opts.open(probeAttr{Type: perfTypeHardware, Config: hwCycles, ExcludeHost: true, BranchStack: true})
		pmu.BranchStack = bsErr == nil && pmu.GuestOnlyCounting
	}

	family, encs := Encodings(cpu)
	for _, e := range encs {
		ec := v1alpha1.EventCapability{Event: e.Event, Encoding: e.EncodingString(), PMUEventName: e.PMUEventName}
		switch {
		case e.Missing != "":
			ec.Reason = e.Missing
		case !pmu.Present:
			ec.Reason = noCounterReason(cyclesErr, denied)
		case pmu.GuestOwnsPMU:
			ec.Reason = "the guests own the PMU (EOPNOTSUPP)"
		default:
			err := opts.open(probeAttr{Type: e.Type, Config: e.Config, ExcludeHost: pmu.GuestOnlyCounting})
			ec.Available = err == nil
			if err != nil {
				ec.Reason = eventReason(err)
			}
		}
		pmu.Events = append(pmu.Events, ec)
	}
	if family == "" && pmu.Present {
		pmu.Reason = strings.TrimPrefix(pmu.Reason+"; ", "; ") + "no event table for " + cpu.String()
	}

	caps.Signals = signals(pmu, opts.EBPFSignals)
	caps.Monitorable, caps.Reason, caps.Message = Decide(opts.Node, caps)
	return caps, nil
}

func (o Options) withDefaults() Options {
	if o.ProcRoot == "" {
		o.ProcRoot = "/proc"
	}
	if o.SysRoot == "" {
		o.SysRoot = "/sys"
	}
	if o.self == "" {
		o.self = "/proc/self"
	}
	if o.open == nil {
		o.open = perfOpenProbe
	}
	return o
}

// detectingSignals are the signals that can reveal an attack on their
// own: LLC contention (covert channels and side channels) and bus locks.
var detectingSignals = []string{
	string(v1alpha1.EventLLCReferences), string(v1alpha1.EventLLCMisses),
	string(v1alpha1.EventBusLocks), string(v1alpha1.EventSplitLocks),
}

// Decide says whether a node is monitorable and, when not, the reason the
// operator shows (the UnmonitoredNode reasons of api/v1alpha1). A node is
// monitorable when at least one signal that reveals an attack works, even
// if others are missing (reduced signals: findings list what was not seen).
func Decide(node string, caps v1alpha1.NodeCapabilities) (monitorable bool, reason, message string) {
	var working, missing []string
	for _, s := range caps.Signals {
		if !slices.Contains(detectingSignals, s.Name) {
			continue
		}
		if s.Available {
			working = append(working, s.Name+" ("+s.Source+")")
		} else {
			missing = append(missing, s.Name)
		}
	}
	if len(working) > 0 {
		msg := fmt.Sprintf("node %s: monitored with %s", node, strings.Join(working, ", "))
		if len(missing) > 0 {
			msg += "; not available: " + strings.Join(missing, ", ")
		}
		return true, "", msg
	}
	pmu := caps.PMU
	switch {
	case pmu.GuestOwnsPMU:
		return false, v1alpha1.ReasonPMUOwnedByGuest, fmt.Sprintf("node %s: KVM gives the PMU to the guests, the host cannot count guest events", node)
	case strings.HasPrefix(pmu.Reason, "perf_event_open denied"):
		return false, v1alpha1.ReasonInsufficientPrivileges, fmt.Sprintf("node %s: %s", node, pmu.Reason)
	case !pmu.Present:
		return false, v1alpha1.ReasonNoHardwareCounters, fmt.Sprintf("node %s: no hardware counters", node)
	}
	// A PMU, but none of the events that reveal attacks.
	return false, v1alpha1.ReasonNoHardwareCounters, fmt.Sprintf("node %s: no hardware counters for %s (%s)", node, strings.Join(missing, ", "), pmu.Reason)
}

// signals lists every signal the detectors use: one per counter event (from
// the PMU, or from eBPF where the PMU lacks it), guest IP samples and
// guest branch stacks.
func signals(pmu *v1alpha1.PMUCapabilities, ebpf []v1alpha1.SignalStatus) []v1alpha1.SignalStatus {
	var out []v1alpha1.SignalStatus
	fromEBPF := func(name string) (v1alpha1.SignalStatus, bool) {
		for _, s := range ebpf {
			if s.Name == name && s.Available {
				return s, true
			}
		}
		return v1alpha1.SignalStatus{}, false
	}
	sampling := false
	for _, e := range pmu.Events {
		s := v1alpha1.SignalStatus{Name: string(e.Event), Available: e.Available, Source: "pmu", Reason: e.Reason}
		if e.Available {
			sampling = true
		} else if alt, ok := fromEBPF(string(e.Event)); ok {
			s = alt
		}
		out = append(out, s)
	}
	ip := v1alpha1.SignalStatus{Name: "guest_ip_samples", Available: sampling, Source: "pmu"}
	if !sampling {
		ip.Reason = "needs an available PMU event to overflow"
	}
	br := v1alpha1.SignalStatus{Name: "guest_branches", Available: pmu.BranchStack, Source: "pmu"}
	if !pmu.BranchStack {
		br.Reason = "the host cannot record guest branch stacks here (no LBR/BRS for guest-only events); IP samples only"
	}
	out = append(out, ip, br)
	// eBPF signals that are not counter events (e.g. co-scheduling).
	for _, s := range ebpf {
		if !slices.ContainsFunc(out, func(o v1alpha1.SignalStatus) bool { return o.Name == s.Name }) {
			out = append(out, s)
		}
	}
	return out
}

// EventsFor turns a policy's event lists into the collector's events,
// using the node's encodings: events the node cannot count are skipped
// (they are reported in the heartbeat already).
func EventsFor(caps v1alpha1.NodeCapabilities, counted, sampled []v1alpha1.CounterEvent) (events []collect.Event, skipped []string) {
	_, encs := Encodings(CPU{Vendor: caps.PMU.Vendor, Family: caps.PMU.Family, Model: caps.PMU.Model, Stepping: caps.PMU.Stepping})
	for _, ev := range counted {
		i := slices.IndexFunc(caps.PMU.Events, func(e v1alpha1.EventCapability) bool { return e.Event == ev })
		j := slices.IndexFunc(encs, func(e Encoding) bool { return e.Event == ev })
		if i < 0 || j < 0 || !caps.PMU.Events[i].Available {
			reason := "unknown event"
			if i >= 0 {
				reason = caps.PMU.Events[i].Reason
			}
			skipped = append(skipped, fmt.Sprintf("%s: %s", ev, reason))
			continue
		}
		e := encs[j]
		events = append(events, collect.Event{
			Name: string(ev), Type: e.Type, Config: e.Config,
			Sample: slices.Contains(sampled, ev),
		})
	}
	return events, skipped
}

func noCounterReason(err error, denied bool) string {
	if denied {
		return "permission denied (perf_event_open: " + errnoName(err) + ")"
	}
	return "no hardware counters (perf_event_open: " + errnoName(err) + ")"
}

func eventReason(err error) string {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ENODEV):
		return "the PMU does not know this event (" + errnoName(err) + ")"
	case errors.Is(err, syscall.EOPNOTSUPP):
		return "not supported for guest-only counting (EOPNOTSUPP)"
	case isDenied(err):
		return "permission denied (" + errnoName(err) + ")"
	}
	return "perf_event_open: " + errnoName(err)
}

func isDenied(err error) bool {
	return errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)
}

func errnoName(err error) string {
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.ENOENT:
			return "ENOENT"
		case syscall.ENODEV:
			return "ENODEV"
		case syscall.EOPNOTSUPP:
			return "EOPNOTSUPP"
		case syscall.EACCES:
			return "EACCES"
		case syscall.EPERM:
			return "EPERM"
		case syscall.EINVAL:
			return "EINVAL"
		case syscall.ENOSYS:
			return "ENOSYS"
		}
		return en.Error()
	}
	if err == nil {
		return "no error"
	}
	return err.Error()
}

func privilegeHint(caps v1alpha1.NodeCapabilities) string {
	return fmt.Sprintf("perf_event_paranoid=%d and the agent holds neither CAP_PERFMON nor CAP_SYS_ADMIN (held: %s)",
		caps.PerfEventParanoid, strings.Join(caps.Capabilities, ","))
}

func hasSysfsPMU(sysRoot string) bool {
	for _, name := range []string{"cpu", "cpu_core", "cpu_atom"} {
		if _, err := os.Stat(filepath.Join(sysRoot, "bus/event_source/devices", name)); err == nil {
			return true
		}
	}
	return false
}

func readInt(path string, def int) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return def
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return def
	}
	return v
}

// capNames are the Linux capabilities by bit (include/uapi/linux/capability.h).
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
	"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
	"CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// relevantCaps are the capabilities the agent's work needs; only these are
// reported, so the heartbeat stays short.
var relevantCaps = []string{"CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_BPF", "CAP_SYS_PTRACE", "CAP_IPC_LOCK", "CAP_SYS_RESOURCE", "CAP_DAC_READ_SEARCH"}

// ParseCapEff decodes the CapEff line of /proc/<pid>/status into the
// relevant capability names held.
func ParseCapEff(status []byte) ([]string, error) {
	for _, line := range strings.Split(string(status), "\n") {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("CapEff %q: %w", v, err)
		}
		var out []string
		for bit, name := range capNames {
			if mask&(1<<bit) != 0 && slices.Contains(relevantCaps, name) {
				out = append(out, name)
			}
		}
		return out, nil
	}
	return nil, errors.New("no CapEff line")
}

func heldCapabilities(statusPath string) []string {
	b, err := os.ReadFile(statusPath)
	if err != nil {
		return nil
	}
	caps, _ := ParseCapEff(b)
	return caps
}

func fdBudget(self string) v1alpha1.FDBudget {
	var b v1alpha1.FDBudget
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil {
		b.Limit = rl.Cur
	}
	if ents, err := os.ReadDir(filepath.Join(self, "fd")); err == nil {
		b.Open = uint64(len(ents))
	}
	return b
}

// WithKernel adds what the eBPF loader (kernel/) reports: its programs, and
// its signals merged into the PMU's. busLocks is the node-wide bus-lock
// signal (kernel.BusLockSignal, which already weighs the PMU's event);
// other kernel signals replace an unavailable PMU signal of the same name
// or are added. Monitorable, Reason and Message are decided again.
func WithKernel(c v1alpha1.NodeCapabilities, programs []v1alpha1.ProgramStatus, signals []v1alpha1.SignalStatus, busLocks *v1alpha1.SignalStatus) v1alpha1.NodeCapabilities {
	c.EBPF = slices.Clone(programs)
	c.Signals = slices.Clone(c.Signals)
	set := func(s v1alpha1.SignalStatus, force bool) {
		i := slices.IndexFunc(c.Signals, func(o v1alpha1.SignalStatus) bool { return o.Name == s.Name })
		switch {
		case i < 0:
			c.Signals = append(c.Signals, s)
		case force || (s.Available && !c.Signals[i].Available):
			c.Signals[i] = s
		}
	}
	for _, s := range signals {
		if s.Name == string(v1alpha1.EventBusLocks) && busLocks != nil {
			continue
		}
		set(s, false)
	}
	if busLocks != nil {
		set(*busLocks, true)
	}
	c.Monitorable, c.Reason, c.Message = Decide(c.Node, c)
	return c
}
