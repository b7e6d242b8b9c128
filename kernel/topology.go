package kernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Topology is which CPUs share a physical core (SMT siblings) and which
// share the last-level cache, as the co-scheduling program needs it.
type Topology struct {
	CPUs []CPU
	// LLC names where the LLC sets came from, e.g. "cache/index3 (L3)";
	// "" when sysfs had no cache information.
	LLC string
}

// CPU is one online logical CPU.
type CPU struct {
	ID int
	// Siblings are the CPUs of the same core, including ID
	// (topology/thread_siblings_list).
	Siblings []int
	// LLC are the CPUs sharing ID's last-level cache, including ID
	// (cache/indexN/shared_cpu_list of the highest-level data or unified
	// cache); nil when unknown.
	LLC []int
}

// Peer kinds, as in include/sidewatch.h.
const (
	peerSMT = 1 << 0
	peerLLC = 1 << 1
)

// maxPeers is MAX_PEERS in include/sidewatch.h.
const maxPeers = 256

// peer is one CPU sharing a core or an LLC with another.
type peer struct {
	cpu  int
	kind uint8
}

// peers lists, for CPU id, every other CPU it shares a core or an LLC
// with. SMT siblings share the LLC too, so they carry both kinds unless the
// LLC is unknown.
func (t Topology) peers(id int) []peer {
	i := slices.IndexFunc(t.CPUs, func(c CPU) bool { return c.ID == id })
	if i < 0 {
		return nil
	}
	c := t.CPUs[i]
	kinds := map[int]uint8{}
	for _, s := range c.Siblings {
		if s != id {
			kinds[s] |= peerSMT
		}
	}
	for _, s := range c.LLC {
		if s != id {
			kinds[s] |= peerLLC
		}
	}
	if c.LLC == nil {
		// Unknown LLC: SMT siblings still share one (every x86 core's
		// caches are shared by its threads); say so.
		for s := range kinds {
			kinds[s] |= peerLLC
		}
	}
	out := make([]peer, 0, len(kinds))
	for s, k := range kinds {
		out = append(out, peer{cpu: s, kind: k})
	}
	// SMT siblings first, so a truncated list keeps them.
	slices.SortFunc(out, func(a, b peer) int {
		if (a.kind&peerSMT != 0) != (b.kind&peerSMT != 0) {
			if a.kind&peerSMT != 0 {
				return -1
			}
			return 1
		}
		return a.cpu - b.cpu
	})
	return out
}

// ReadTopology reads the CPU topology under sysfsRoot (normally "/sys"):
// devices/system/cpu/online, cpuN/topology/thread_siblings_list and the
// highest-level data or unified cache's shared_cpu_list under cpuN/cache.
func ReadTopology(sysfsRoot string) (Topology, error) {
	base := filepath.Join(sysfsRoot, "devices", "system", "cpu")
	b, err := os.ReadFile(filepath.Join(base, "online"))
	if err != nil {
		return Topology{}, fmt.Errorf("kernel: read online CPUs: %w", err)
	}
	online, err := ParseCPUList(string(b))
	if err != nil {
		return Topology{}, fmt.Errorf("kernel: %s: %w", filepath.Join(base, "online"), err)
	}
	var t Topology
	llcNames := map[string]bool{}
	for _, id := range online {
		dir := filepath.Join(base, "cpu"+strconv.Itoa(id))
		c := CPU{ID: id, Siblings: []int{id}}
		if b, err := os.ReadFile(filepath.Join(dir, "topology", "thread_siblings_list")); err == nil {
			if c.Siblings, err = ParseCPUList(string(b)); err != nil {
				return Topology{}, fmt.Errorf("kernel: cpu%d thread_siblings_list: %w", id, err)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return Topology{}, fmt.Errorf("kernel: cpu%d topology: %w", id, err)
		}
		llc, name, err := readLLC(filepath.Join(dir, "cache"))
		if err != nil {
			return Topology{}, fmt.Errorf("kernel: cpu%d cache: %w", id, err)
		}
		c.LLC = llc
		if name != "" {
			llcNames[name] = true
		}
		t.CPUs = append(t.CPUs, c)
	}
	names := make([]string, 0, len(llcNames))
	for n := range llcNames {
		names = append(names, n)
	}
	slices.Sort(names)
	t.LLC = strings.Join(names, ",")
	return t, nil
}

// readLLC returns the shared_cpu_list of the highest-level data or unified
// cache in a cpuN/cache directory, and which index it was.
func readLLC(dir string) ([]int, string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	best, bestLevel := "", -1
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "index") {
			continue
		}
		typ, err := os.ReadFile(filepath.Join(dir, e.Name(), "type"))
		if err != nil || strings.TrimSpace(string(typ)) == "Instruction" {
			continue
		}
		lb, err := os.ReadFile(filepath.Join(dir, e.Name(), "level"))
		if err != nil {
			continue
		}
		level, err := strconv.Atoi(strings.TrimSpace(string(lb)))
		if err != nil {
			continue
		}
		if level > bestLevel {
			best, bestLevel = e.Name(), level
		}
	}
	if best == "" {
		return nil, "", nil
	}
	b, err := os.ReadFile(filepath.Join(dir, best, "shared_cpu_list"))
	if err != nil {
		return nil, "", err
	}
	cpus, err := ParseCPUList(string(b))
	if err != nil {
		return nil, "", fmt.Errorf("%s/shared_cpu_list: %w", best, err)
	}
	return cpus, fmt.Sprintf("cache/%s (L%d)", best, bestLevel), nil
}

// maxCPUID bounds CPU numbers in lists; Linux's NR_CPUS tops out at 8192.
const maxCPUID = 1 << 13

// ParseCPUList parses the kernel's CPU list format ("0-3,8,10-11").
func ParseCPUList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out []int
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 || a >= maxCPUID {
			return nil, fmt.Errorf("bad CPU list %q: %q is not a CPU number below %d", s, lo, maxCPUID)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b >= maxCPUID {
				return nil, fmt.Errorf("bad CPU list %q: bad range %q", s, part)
			}
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
