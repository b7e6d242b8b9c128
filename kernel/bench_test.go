//go:build linux && amd64

package kernel

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// BenchmarkSchedSwitch measures what the sched_switch program adds to a
// context switch: two threads pinned to CPU 0 ping-pong a byte through two
// pipes (two switches per round trip), without the program, with it and
// neither thread watched (every switch on the host), with both watched as
// vCPUs of different VMIs (a handover per switch), and with a third
// watched vCPU busy on CPU 1 (an overlap with a peer to add per switch).
//
//	go test ./kernel -run '^$' -bench SchedSwitch -benchtime 200000x -count 5
func BenchmarkSchedSwitch(b *testing.B) {
	for _, c := range []struct {
		name         string
		load, watch  bool
		busyPeerCPU1 bool
		empty        bool
	}{
		{"no-bpf", false, false, false, false},
		// An empty tp_btf program: the floor any sched_switch program pays
		// (trampoline, and with run-time stats on, two clock reads).
		{"bpf/empty-program", false, false, false, true},
		{"bpf/unwatched", true, false, false, false},
		{"bpf/vcpus", true, true, false, false},
		{"bpf/vcpus+peer", true, true, true, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			requireRoot(b)
			a := startPinned(b, 0)
			z := startPinned(b, 0)
			var l *Loader
			if c.load {
				l = mustLoad(b, Options{})
			}
			if c.watch {
				if err := l.WatchThread(a.tid, "ns/a"); err != nil {
					b.Fatal(err)
				}
				if err := l.WatchThread(z.tid, "ns/b"); err != nil {
					b.Fatal(err)
				}
			}
			if c.busyPeerCPU1 {
				p := startPinned(b, 1)
				if err := l.WatchThread(p.tid, "ns/c"); err != nil {
					b.Fatal(err)
				}
				var stop atomic.Bool
				p.goDo(func() { spinUntil(&stop) })
				defer func() { stop.Store(true); p.do(func() {}) }()
			}
			prog := (*ebpf.Program)(nil)
			if c.empty {
				prog = emptySchedSwitch(b)
			} else if c.load {
				prog = l.schedSwitch
			}
			var before *ebpf.ProgramStats
			if prog != nil {
				stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
				if err != nil {
					b.Fatal(err)
				}
				defer stats.Close()
				if before, err = prog.Stats(); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			pingPong(b, a, z, b.N)
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(2*b.N), "ns/switch")
			if prog != nil {
				after, err := prog.Stats()
				if err != nil {
					b.Fatal(err)
				}
				if runs := after.RunCount - before.RunCount; runs > 0 {
					b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(runs), "bpf-ns/run")
				}
			}
		})
	}
}

// emptySchedSwitch attaches a program that does nothing to sched_switch.
func emptySchedSwitch(b *testing.B) *ebpf.Program {
	b.Helper()
	requireRoot(b)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "sched_switch",
		License: "Dual MIT/GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	lk, err := link.AttachTracing(link.TracingOptions{Program: p})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lk.Close() })
	return p
}

// BenchmarkSchedSwitchOverhead measures the program's cost on the wall
// clock, without run-time statistics: the same ping-pong, alternating
// batches with the program attached and detached so that drift in the
// machine's load hits both alike. overhead-ns/switch is the difference.
//
//	go test ./kernel -run '^$' -bench SchedSwitchOverhead -benchtime 2000000x -count 3
func BenchmarkSchedSwitchOverhead(b *testing.B) {
	for _, watch := range []bool{false, true} {
		name := "unwatched"
		if watch {
			name = "vcpus"
		}
		b.Run(name, func(b *testing.B) {
			l := mustLoad(b, Options{})
			a := startPinned(b, 0)
			z := startPinned(b, 0)
			if watch {
				if err := l.WatchThread(a.tid, "ns/a"); err != nil {
					b.Fatal(err)
				}
				if err := l.WatchThread(z.tid, "ns/b"); err != nil {
					b.Fatal(err)
				}
			}
			const batch = 5000
			var on, off time.Duration
			var onN, offN int
			attached := true
			b.ResetTimer()
			for done := 0; done < b.N; done += batch {
				n := min(batch, b.N-done)
				start := time.Now()
				pingPong(b, a, z, n)
				if d := time.Since(start); attached {
					on, onN = on+d, onN+n
				} else {
					off, offN = off+d, offN+n
				}
				b.StopTimer()
				if attached {
					detachSchedSwitch(b, l)
				} else {
					attachSchedSwitch(b, l)
				}
				attached = !attached
				b.StartTimer()
			}
			b.StopTimer()
			if onN == 0 || offN == 0 {
				return
			}
			perOn := float64(on.Nanoseconds()) / float64(2*onN)
			perOff := float64(off.Nanoseconds()) / float64(2*offN)
			b.ReportMetric(perOn, "attached-ns/switch")
			b.ReportMetric(perOff, "detached-ns/switch")
			b.ReportMetric(perOn-perOff, "overhead-ns/switch")
		})
	}
}

// detachSchedSwitch closes the sched_switch program's link.
func detachSchedSwitch(b *testing.B, l *Loader) {
	b.Helper()
	id, err := programID(l.schedSwitch)
	if err != nil {
		b.Fatal(err)
	}
	for i, lk := range l.links {
		info, err := lk.Info()
		if err != nil || info.Program != id {
			continue
		}
		if err := lk.Close(); err != nil {
			b.Fatal(err)
		}
		l.links = append(l.links[:i], l.links[i+1:]...)
		return
	}
	b.Fatal("sched_switch link not found")
}

func attachSchedSwitch(b *testing.B, l *Loader) {
	b.Helper()
	lk, err := link.AttachTracing(link.TracingOptions{Program: l.schedSwitch})
	if err != nil {
		b.Fatal(err)
	}
	l.links = append(l.links, lk)
}

func programID(p *ebpf.Program) (ebpf.ProgramID, error) {
	info, err := p.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return id, nil
}
