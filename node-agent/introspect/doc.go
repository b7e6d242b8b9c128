// Package introspect reads a running QEMU/KVM guest from the host, read-only
// and without an agent in the guest: it lists the guest's processes, reads
// their memory maps and turns guest addresses (sampled RIPs) into process,
// file, offset and symbol. The node agent uses it to fill the guest evidence
// of ThreatFindings; `sidewatch introspect` exposes it to responders.
//
// # What it reads
//
//   - Guest RAM: the shared memory-backend file (Source.MemoryFile, mapped
//     read-only) or QEMU's own memory through /proc/<pid>/mem
//     (Source.PID; works for KubeVirt's default anonymous RAM). The guest
//     physical layout (RAM split around the PCI hole, above 4 GiB on q35
//     guests larger than 2.75 GiB) comes from QEMU's `info mtree -f`.
//   - vCPU registers from QEMU's monitor (QMP `human-monitor-command`
//     `info registers -a`): CR3 (the page tables), CR4 (4- or 5-level
//     paging), CPL and GS base (which guest CPU a vCPU is). They are read at
//     Open and then at most every Options.RegistersMaxAge.
//   - The guest kernel, found in its own memory without per-kernel
//     profiles: the image in the KASLR window through the page tables, its
//     BTF (CONFIG_DEBUG_INFO_BTF, parsed with cilium/ebpf) for every
//     structure offset, its kallsyms tables for symbols (a System.map
//     profile is the fallback). No structure offset is compiled in.
//
// # API
//
//	g, err := introspect.Open(ctx, introspect.Source{PID: qemuPID, QMPSocket: sock},
//		introspect.Options{Cache: nodeWideKernelCache})
//	defer g.Close()
//	procs, err := g.Processes(ctx)          // []Process{PID, PPID, Comm, Kernel}
//	maps, err := g.Maps(ctx, pid)           // []Mapping, as /proc/<pid>/maps
//	tids, err := g.VCPUThreads(ctx)         // host thread id -> vCPU index
//	vcpus, err := g.VCPUs(ctx)              // what runs on each vCPU now
//	err = g.Observe()                       // remember what runs now (cheap)
//	a, err := g.Resolve(ctx, introspect.Query{Address: rip, VCPU: n, At: t})
//	// a.PID, a.Comm, a.Path, a.Offset, a.Symbol, a.SymbolOffset
//	info := g.Kernel()                      // banner, KASLR base, BTF, symbols
//	st := g.Stats()                         // cost: refresh time, bytes held
//
// Resolve attributes a user address to Query.PID, or else to the task that
// ran on Query.VCPU at Query.At (an Observe or VCPUs observation within
// Options.SampleSkew), or else to the task running on it now. Kernel
// addresses resolve to the guest kernel's symbols, or to a loaded module's.
//
// # Cost
//
// Processes, Maps and Resolve share a snapshot of every process and memory
// map, refreshed when older than Options.MaxAge (a refresh of a 255-process
// guest takes a few milliseconds); a process or mapping missing from the
// snapshot triggers a refresh at most every 100 ms. A library's symbols are
// read once per file (by inode) and kept within Limits.MaxELFBytes. A warm
// Resolve costs about a microsecond. Stats reports the memory a guest holds;
// a KernelCache shared by the guests of a node keeps one copy of each kernel
// build's types and symbols. Every walk is bounded by Limits and the
// refresh by Options.RefreshTimeout and the context.
//
// # Hostile guests
//
// Guest memory belongs to the tenant and changes while it is read. Every
// walker bounds its steps (list cycles, tree depth, counts, name lengths),
// checks what it reads for consistency and returns errors wrapping
// ErrInconsistent, ErrLimit or ErrUnmapped instead of panicking or spinning;
// a refresh that meets a torn structure retries and keeps what is readable
// (Stats.PartialErrors). Names from the guest are escaped. Each parser has a
// fuzz target (make fuzz-introspect).
package introspect
