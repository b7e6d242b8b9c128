// Package evidencetest builds realistic evidence for tests, demos and the
// documentation: the counter trains, detector figures, samples, process
// lists and co-scheduling of a simulated attack, computed from a model of
// the attack rather than written as constants, so the plots of a report
// look like what a responder would see.
//
// Three scenarios:
//   - CovertChannel: a trojan in the protected VMI leaks data over the LLC
//     with a 20 ms bit period (a burst at the start of every period, long
//     for 1, short for 0) to a receiver VMI that probes the shared sets.
//   - PrimeProbe: an attacker VMI primes and probes LLC sets while the
//     victim runs RSA private-key operations (OpenSSL's
//     BN_mod_exp_mont_consttime) for incoming TLS handshakes.
//   - BusLock: a sender VMI issues bursts of split locks every 25 ms; the
//     receiver times its memory accesses.
//
// Every scenario is deterministic for a given seed.
package evidencetest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
)

// Scenario is a finding as the operator left it, its evidence snapshot and
// the Events recorded about it.
type Scenario struct {
	Finding  *v1alpha1.ThreatFinding
	Snapshot *evidence.Snapshot
	Events   []corev1.Event
}

// Onset is the onset of every scenario: the moment the detector's threshold
// was crossed.
var Onset = time.Date(2026, 11, 23, 10, 15, 2, 0, time.UTC)

const (
	step       = time.Millisecond
	windowFrom = -2 * time.Second // series cover [-2s, +2s) around the onset
	windowTo   = 2 * time.Second
	nBins      = int((windowTo - windowFrom) / step)
)

// vmiModel is one VMI of a scenario and what it runs.
type vmiModel struct {
	vmi      evidence.VMI
	programs []program // sampled code, by activity
	procs    []evidence.Process
}

// program is guest code that shows up in samples.
type program struct {
	pid    int32
	comm   string
	path   string
	base   uint64 // guest virtual address where the file's text is mapped
	symbol string
	offset uint64 // symbol's offset in the file
	size   uint64
	active bool    // sampled while the attack runs, else in the background
	weight float64 // relative share among its pool (0 means 1)
}

type gen struct {
	rng *rand.Rand
}

// noisy returns a count around mean: Poisson-like noise plus 6% workload
// jitter, never negative.
func (g *gen) noisy(mean float64) float64 {
	if mean <= 0 {
		return 0
	}
	sd := math.Sqrt(mean) + 0.06*mean
	return math.Max(0, math.Round(mean+sd*g.rng.NormFloat64()))
}

func binStart(i int) int64 { return int64(windowFrom) + int64(i)*int64(step) }

// host is the node the attacks happen on.
func host(unavailable ...string) evidence.Host {
	return evidence.Host{
		Node:               "worker-3",
		CPUModel:           "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
		Vendor:             "GenuineIntel",
		Family:             6,
		Model:              106,
		Stepping:           6,
		Microcode:          "0xd0003e7",
		KernelRelease:      "6.1.0-28-amd64",
		SMT:                "on",
		LogicalCPUs:        128,
		LLCDomains:         2,
		HardwareCounters:   true,
		AgentVersion:       "v0.1.0",
		UnavailableSignals: unavailable,
	}
}

var (
	victimUID   = types.UID("7f0c6a9e-3d55-4f55-9a61-0d7e3b1f2c11")
	attackerUID = types.UID("0b6f1f2e-8c9d-4d7e-a3b2-5e6f7a8b9c0d")
	bystanderID = types.UID("5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f")
)

func systemProcs(extra ...evidence.Process) []evidence.Process {
	libc := []string{"/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"}
	procs := []evidence.Process{
		{PID: 1, Comm: "systemd", Exe: "/usr/lib/systemd/systemd", Libraries: append([]string{"/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so", "/usr/lib/x86_64-linux-gnu/libseccomp.so.2"}, libc...)},
		{PID: 2, Comm: "kthreadd"},
		{PID: 214, PPID: 1, Comm: "systemd-journal", Exe: "/usr/lib/systemd/systemd-journald", Libraries: append([]string{"/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so"}, libc...)},
		{PID: 402, PPID: 1, Comm: "systemd-network", Exe: "/usr/lib/systemd/systemd-networkd", Libraries: libc},
		{PID: 520, PPID: 1, Comm: "qemu-ga", Exe: "/usr/sbin/qemu-ga", Libraries: append([]string{"/usr/lib/x86_64-linux-gnu/libglib-2.0.so.0"}, libc...)},
		{PID: 611, PPID: 1, Comm: "sshd", Exe: "/usr/sbin/sshd", Libraries: append([]string{"/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/lib/x86_64-linux-gnu/libz.so.1"}, libc...)},
		{PID: 640, PPID: 1, Comm: "cron", Exe: "/usr/sbin/cron", Libraries: libc},
	}
	return append(procs, extra...)
}

func payments(role string) vmiModel {
	libc := []string{"/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"}
	pg := []string{"/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/x86_64-linux-gnu/libpq.so.5", "/usr/lib/x86_64-linux-gnu/libicuuc.so.72"}
	procs := systemProcs(
		evidence.Process{PID: 790, PPID: 1, Comm: "postgres", Exe: "/usr/lib/postgresql/15/bin/postgres", Libraries: append(slices.Clone(pg), libc...)},
		evidence.Process{PID: 806, PPID: 790, Comm: "postgres", Exe: "/usr/lib/postgresql/15/bin/postgres", Libraries: append(slices.Clone(pg), libc...)},
		evidence.Process{PID: 812, PPID: 790, Comm: "postgres", Exe: "/usr/lib/postgresql/15/bin/postgres", Libraries: append(slices.Clone(pg), libc...)},
		evidence.Process{PID: 813, PPID: 790, Comm: "postgres", Exe: "/usr/lib/postgresql/15/bin/postgres", Libraries: append(slices.Clone(pg), libc...)},
	)
	return vmiModel{
		vmi:   evidence.VMI{Namespace: "payments", Name: "payments-db", UID: victimUID, Role: role, VCPUs: 4, HostCPUs: []int32{12, 13, 76, 77}},
		procs: procs,
		programs: []program{
			{pid: 812, comm: "postgres", path: "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", base: 0x7f3a1c000000, symbol: "BN_mod_exp_mont_consttime", offset: 0x1a2b40, size: 0x900, active: true},
			{pid: 812, comm: "postgres", path: "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", base: 0x7f3a1c000000, symbol: "bn_mul_mont", offset: 0x0e4a00, size: 0x400, active: true},
			{pid: 806, comm: "postgres", path: "/usr/lib/postgresql/15/bin/postgres", base: 0x55d0c8a00000, symbol: "hash_search_with_hash_value", offset: 0x5c3e10, size: 0x300},
			{pid: 806, comm: "postgres", path: "/usr/lib/x86_64-linux-gnu/libc.so.6", base: 0x7f3a1b800000, symbol: "__memcpy_avx_unaligned_erms", offset: 0x19f6c0, size: 0x200, weight: 0.5},
			{pid: 214, comm: "systemd-journal", path: "/usr/lib/systemd/systemd-journald", base: 0x5601f2400000, symbol: "", offset: 0x12a40, size: 0x800, weight: 0.15},
		},
	}
}

func renderFarm(role string, tool []program) vmiModel {
	libc := []string{"/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"}
	procs := systemProcs(
		evidence.Process{PID: 1180, PPID: 611, Comm: "sshd", Exe: "/usr/sbin/sshd", Libraries: append([]string{"/usr/lib/x86_64-linux-gnu/libcrypto.so.3"}, libc...)},
		evidence.Process{PID: 1190, PPID: 1180, Comm: "bash", Exe: "/usr/bin/bash", Libraries: append([]string{"/usr/lib/x86_64-linux-gnu/libtinfo.so.6"}, libc...)},
		evidence.Process{PID: 1337, PPID: 1190, Comm: "spy", Exe: "/opt/tools/spy", Libraries: append([]string{"/usr/lib/x86_64-linux-gnu/libm.so.6"}, libc...)},
		evidence.Process{PID: 1402, PPID: 1, Comm: "blender", Exe: "/usr/bin/blender", Libraries: append([]string{"/usr/lib/x86_64-linux-gnu/libOpenImageIO.so.2.4", "/usr/lib/x86_64-linux-gnu/libtbb.so.12", "/usr/lib/x86_64-linux-gnu/libGL.so.1"}, libc...)},
	)
	programs := append(tool,
		program{pid: 1402, comm: "blender", path: "/usr/bin/blender", base: 0x55a4e0000000, symbol: "", offset: 0x2f41c80, size: 0x4000},
		program{pid: 1402, comm: "blender", path: "/usr/lib/x86_64-linux-gnu/libtbb.so.12", base: 0x7f11c2000000, symbol: "", offset: 0x2a3f0, size: 0x600},
	)
	return vmiModel{
		vmi:      evidence.VMI{Namespace: "batch", Name: "render-farm-7", UID: attackerUID, Role: role, VCPUs: 8, HostCPUs: []int32{14, 15, 76, 78, 79, 80, 81, 82}},
		procs:    procs,
		programs: programs,
	}
}

func etlWorker() vmiModel {
	libc := []string{"/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"}
	return vmiModel{
		vmi: evidence.VMI{Namespace: "batch", Name: "etl-worker-2", UID: bystanderID, Role: "Unknown", VCPUs: 4, HostCPUs: []int32{40, 41, 104, 105}},
		procs: systemProcs(
			evidence.Process{PID: 930, PPID: 1, Comm: "java", Exe: "/usr/lib/jvm/java-17-openjdk-amd64/bin/java", Libraries: append([]string{"/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so", "/usr/lib/x86_64-linux-gnu/libz.so.1"}, libc...)},
		),
		programs: []program{
			{pid: 930, comm: "java", path: "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so", base: 0x7fd2a0000000, symbol: "G1ParScanThreadState::trim_queue_to_threshold", offset: 0x6b1c20, size: 0x800},
			{pid: 930, comm: "java", path: "[anon:jit]", base: 0x7fd290000000, symbol: "", offset: 0x0, size: 0x10000},
		},
	}
}

// CovertChannel is a cache covert channel: a trojan (cache-sync) inside
// payments-db sends one bit every 20 ms by thrashing shared LLC sets, long
// for 1 and short for 0; spy in render-farm-7 receives.
func CovertChannel(seed uint64) *Scenario {
	g := &gen{rng: rand.New(rand.NewPCG(seed, 0x5eed))}
	const (
		period    = 20 * time.Millisecond
		chanStart = -1300 * time.Millisecond
		probeFrom = -1700 * time.Millisecond
	)
	victim := payments(evidence.RoleVictim)
	victim.procs = append(victim.procs, evidence.Process{PID: 2211, PPID: 1, Comm: "cache-sync", Exe: "/usr/local/bin/cache-sync", Libraries: []string{"/usr/lib/x86_64-linux-gnu/libc.so.6"}})
	victim.programs = append([]program{{pid: 2211, comm: "cache-sync", path: "/usr/local/bin/cache-sync", base: 0x5612ab000000, symbol: "send_bit", offset: 0x1240, size: 0x180, active: true}}, victim.programs[2:]...)
	receiver := renderFarm("Receiver", []program{
		{pid: 1337, comm: "spy", path: "/opt/tools/spy", base: 0x55e3c1200000, symbol: "receive_bit", offset: 0x11c0, size: 0x140, active: true},
		{pid: 1337, comm: "spy", path: "/opt/tools/spy", base: 0x55e3c1200000, symbol: "probe_set", offset: 0x1080, size: 0x100, active: true},
	})
	bystander := etlWorker()
	models := []vmiModel{victim, receiver, bystander}

	// The message: the trojan encrypts what it leaks, so the bits look
	// random; one bit per period.
	bits := make([]bool, int((windowTo-chanStart)/period)+1)
	for i := range bits {
		bits[i] = g.rng.IntN(2) == 1
	}
	sending := func(t time.Duration) bool {
		if t < chanStart {
			return false
		}
		slot := int((t - chanStart) / period)
		within := (t - chanStart) % period
		burst := 5 * time.Millisecond
		if bits[slot] {
			burst = 14 * time.Millisecond
		}
		return within < burst
	}
	activity := make([]bool, nBins)
	for i := range activity {
		activity[i] = sending(time.Duration(binStart(i)) + step/2)
	}

	refs := map[string][]float64{}
	misses := map[string][]float64{}
	for _, m := range models {
		refs[m.vmi.Key()] = make([]float64, nBins)
		misses[m.vmi.Key()] = make([]float64, nBins)
	}
	for i := 0; i < nBins; i++ {
		t := time.Duration(binStart(i))
		slow := 1 + 0.15*math.Sin(2*math.Pi*float64(t)/float64(1700*time.Millisecond))
		a := activity[i]
		// The sender: postgres' own work plus the trojan's thrashing.
		v := victim.vmi.Key()
		r, mi := 4200*slow, 340*slow
		if a {
			r, mi = r+26000, mi+15500
		}
		refs[v][i], misses[v][i] = g.noisy(r), g.noisy(mi)
		// The receiver probes the shared sets all the time; it misses
		// when the sender evicted them.
		x := receiver.vmi.Key()
		r, mi = 1500, 180 // rendering idles between frames
		if t >= probeFrom {
			r, mi = 9200, 420
			if a {
				mi += 6100
			}
		}
		refs[x][i], misses[x][i] = g.noisy(r), g.noisy(mi)
		// The bystander runs a JVM batch job with GC pauses.
		y := bystander.vmi.Key()
		gc := 0.0
		if (int(t/time.Millisecond)+2000)%730 < 40 {
			gc = 1
		}
		r, mi = 15000*slow+22000*gc, 2400*slow+9000*gc
		refs[y][i], misses[y][i] = g.noisy(r), g.noisy(mi)
	}

	s := newSnapshot(models, host())
	for _, m := range models {
		s.Series = append(s.Series,
			series(m.vmi.Key(), v1alpha1.EventLLCReferences, refs[m.vmi.Key()]),
			series(m.vmi.Key(), v1alpha1.EventLLCMisses, misses[m.vmi.Key()]))
	}

	// CC-Hunter: autocorrelation of the receiver's conflict-miss train over
	// the detection window [-1s, 0).
	rx := misses[receiver.vmi.Key()]
	from, to := binIndex(-time.Second), binIndex(0)
	curve := Autocorrelation(rx[from:to], 250)
	const threshold = 0.4
	peakLag, peak := Peak(curve, threshold)
	s.Detector = evidence.Detector{
		Name:  "cache-oscillation/v1",
		Score: 0.86,
		Autocorrelation: &evidence.Correlogram{
			VMI: receiver.vmi.Key(), Event: v1alpha1.EventLLCMisses, LagStepNs: int64(step),
			Values: curve, PeakLagNs: int64(peakLag) * int64(step), PeakValue: peak, Threshold: threshold,
		},
		CrossCorrelation: crossCorrelation(victim.vmi.Key()+"+"+receiver.vmi.Key(), misses[victim.vmi.Key()][from:to], rx[from:to], 10),
		EventRates:       rates(s.Series, v1alpha1.EventLLCMisses, from, to),
		Figures: map[string]float64{
			"bitsPerSecond":    float64(time.Second / period),
			"periodJitterMs":   0.21,
			"detectionWindowS": 1,
			"missRatioRx":      sum(rx[from:to]) / sum(refs[receiver.vmi.Key()][from:to]),
		},
	}
	s.Samples = samples(g, models, misses, map[string][]bool{victim.vmi.Key(): activity, receiver.vmi.Key(): after(probeFrom)}, 9000)
	s.Processes = processLists(models)
	s.CoScheduling = []evidence.CoScheduling{
		coSchedule(g, victim.vmi.Key(), receiver.vmi.Key(), 0.63, 0.97),
		coSchedule(g, victim.vmi.Key(), bystander.vmi.Key(), 0.04, 0.38),
		coSchedule(g, receiver.vmi.Key(), bystander.vmi.Key(), 0.05, 0.41),
	}

	f := finding("payments-db-cachecovertchannel", v1alpha1.CacheCovertChannel, "cache-oscillation/v1", 0.86, s)
	f.Spec.Suspects = []v1alpha1.Suspect{
		suspect(receiver, 0.91, "Receiver", s),
		suspect(bystander, 0.12, "Unknown", s),
	}
	// What the agent's weighing found (agent.weighByColocation).
	f.Spec.Suspects[0].CoScheduling = &v1alpha1.SuspectCoScheduling{Window: metav1.Duration{Duration: 20 * time.Second}, SharedLLC: 0.97, SMTSiblings: 0.63, Handovers: 12, Weight: 1}
	f.Spec.Suspects[1].CoScheduling = &v1alpha1.SuspectCoScheduling{Window: metav1.Duration{Duration: 20 * time.Second}, SharedLLC: 0.38, SMTSiblings: 0.04, Weight: 1}
	per := metav1.Duration{Duration: period}
	f.Spec.Evidence = v1alpha1.Evidence{
		Window:              &metav1.Duration{Duration: time.Second},
		AutocorrelationPeak: ptr.To(round(peak, 3)),
		Period:              &per,
		BitsPerSecond:       ptr.To(50.0),
		Samples:             int64(len(s.Samples)),
		EventRates:          s.Detector.EventRates,
	}
	return finish(f, s)
}

// PrimeProbe is a Prime+Probe attack: spy in render-farm-7 primes and
// probes LLC sets while payments-db computes RSA signatures for TLS
// handshakes arriving about 12 times a second.
func PrimeProbe(seed uint64) *Scenario {
	g := &gen{rng: rand.New(rand.NewPCG(seed, 0x9e37))}
	victim := payments(evidence.RoleVictim)
	attacker := renderFarm("Attacker", []program{
		{pid: 1337, comm: "spy", path: "/opt/tools/spy", base: 0x55e3c1200000, symbol: "probe_set", offset: 0x1080, size: 0x100, active: true},
		{pid: 1337, comm: "spy", path: "/opt/tools/spy", base: 0x55e3c1200000, symbol: "prime_set", offset: 0x0f40, size: 0xc0, active: true},
	})
	bystander := etlWorker()
	models := []vmiModel{victim, attacker, bystander}

	// The victim's sensitive phases: one RSA-2048 private-key operation per
	// handshake, 4-9 ms each in this VM.
	var phases []evidence.Interval
	for t := windowFrom + time.Duration(g.rng.ExpFloat64()*float64(80*time.Millisecond)); t < windowTo; {
		d := 4*time.Millisecond + time.Duration(g.rng.Float64()*float64(5*time.Millisecond))
		phases = append(phases, evidence.Interval{StartNs: int64(t), EndNs: int64(min(t+d, windowTo))})
		t += d + 5*time.Millisecond + time.Duration(g.rng.ExpFloat64()*float64(75*time.Millisecond))
	}
	inPhase := make([]bool, nBins)
	// How strongly the attacker sees each phase: its eviction sets cover
	// only part of the victim's tables, and some phases touch none of them.
	seen := make([]float64, nBins)
	for _, p := range phases {
		strength := 0.35 + 0.65*g.rng.Float64()
		if g.rng.Float64() < 0.15 {
			strength = 0
		}
		for i := binIndex(time.Duration(p.StartNs)); i < binIndex(time.Duration(p.EndNs)) && i < nBins; i++ {
			inPhase[i] = true
			seen[i] = strength
		}
	}
	const attackFrom = -1500 * time.Millisecond

	refs := map[string][]float64{}
	misses := map[string][]float64{}
	for _, m := range models {
		refs[m.vmi.Key()] = make([]float64, nBins)
		misses[m.vmi.Key()] = make([]float64, nBins)
	}
	for i := 0; i < nBins; i++ {
		t := time.Duration(binStart(i))
		slow := 1 + 0.12*math.Sin(2*math.Pi*float64(t)/float64(2300*time.Millisecond))
		v := victim.vmi.Key()
		r, mi := 3800*slow, 160*slow
		if inPhase[i] {
			r, mi = r+9500, mi+2600 // modexp's precomputed tables
		}
		refs[v][i], misses[v][i] = g.noisy(r), g.noisy(mi)
		x := attacker.vmi.Key()
		r, mi = 1500, 180
		if t >= attackFrom {
			// Probing 2048 lines of its eviction sets, about every 150 µs.
			r, mi = 13600, 640
			mi += 5200 * seen[i] // the victim's modexp evicted primed lines
		}
		refs[x][i], misses[x][i] = g.noisy(r), g.noisy(mi)
		y := bystander.vmi.Key()
		gc := 0.0
		if (int(t/time.Millisecond)+2000)%730 < 40 {
			gc = 1
		}
		r, mi = 15000*slow+22000*gc, 2400*slow+9000*gc
		refs[y][i], misses[y][i] = g.noisy(r), g.noisy(mi)
	}

	s := newSnapshot(models, host("guest_branches: LBR is passed through to guests on this node"))
	for _, m := range models {
		s.Series = append(s.Series,
			series(m.vmi.Key(), v1alpha1.EventLLCReferences, refs[m.vmi.Key()]),
			series(m.vmi.Key(), v1alpha1.EventLLCMisses, misses[m.vmi.Key()]))
	}
	from, to := binIndex(attackFrom), binIndex(windowTo)
	ind := make([]float64, nBins)
	for i, p := range inPhase {
		if p {
			ind[i] = 1
		}
	}
	ax := misses[attacker.vmi.Key()]
	corr := Pearson(ind[from:to], ax[from:to])
	anomalies := Anomalies(ax[from:to], binStart(from), int64(step))
	byBystander := Pearson(ind[from:to], misses[bystander.vmi.Key()][from:to])
	s.Detector = evidence.Detector{
		Name:  "crypto-correlation/v1",
		Score: 0.93,
		PhaseCorrelation: []evidence.PhaseCorrelation{
			{Suspect: attacker.vmi.Key(), Victim: victim.vmi.Key(), Signature: "openssl-rsa", Coefficient: corr, Phases: phases, Anomalies: anomalies},
			{Suspect: bystander.vmi.Key(), Victim: victim.vmi.Key(), Signature: "openssl-rsa", Coefficient: byBystander,
				Phases: phases, Anomalies: Anomalies(misses[bystander.vmi.Key()][from:to], binStart(from), int64(step))},
		},
		EventRates: rates(s.Series, v1alpha1.EventLLCMisses, from, to),
		Figures: map[string]float64{
			"anomalyScore":       9.4,
			"correlationMinimum": 0.6,
			"phasesPerSecond":    float64(len(phases)) / (windowTo - windowFrom).Seconds(),
		},
	}
	s.Samples = samples(g, models, misses, map[string][]bool{victim.vmi.Key(): inPhase, attacker.vmi.Key(): after(attackFrom)}, 9000)
	s.Processes = processLists(models)
	s.CoScheduling = []evidence.CoScheduling{
		coSchedule(g, victim.vmi.Key(), attacker.vmi.Key(), 0.58, 0.98),
		coSchedule(g, victim.vmi.Key(), bystander.vmi.Key(), 0.03, 0.36),
		coSchedule(g, attacker.vmi.Key(), bystander.vmi.Key(), 0.06, 0.44),
	}

	f := finding("payments-db-cachesidechannel", v1alpha1.CacheSideChannel, "crypto-correlation/v1", 0.93, s)
	f.Spec.Suspects = []v1alpha1.Suspect{
		suspect(attacker, 0.91, "Attacker", s),
		suspect(bystander, 0.08, "Unknown", s),
	}
	f.Spec.Evidence = v1alpha1.Evidence{
		Window:       &metav1.Duration{Duration: 3500 * time.Millisecond},
		Correlation:  ptr.To(round(corr, 3)),
		AnomalyScore: ptr.To(9.4),
		Signature:    "openssl-rsa",
		Samples:      int64(len(s.Samples)),
		EventRates:   s.Detector.EventRates,
	}
	return finish(f, s)
}

// BusLock is a bus-lock covert channel: a sender in payments-db takes
// split locks in bursts at the start of every 25 ms period (a burst for 1,
// none for 0); render-farm-7 times its memory accesses.
func BusLock(seed uint64) *Scenario {
	g := &gen{rng: rand.New(rand.NewPCG(seed, 0xb5))}
	const (
		period    = 25 * time.Millisecond
		chanStart = -1400 * time.Millisecond
	)
	victim := payments(evidence.RoleVictim)
	victim.procs = append(victim.procs, evidence.Process{PID: 2290, PPID: 1, Comm: "lockd", Exe: "/usr/local/sbin/lockd", Libraries: []string{"/usr/lib/x86_64-linux-gnu/libc.so.6"}})
	victim.programs = append([]program{{pid: 2290, comm: "lockd", path: "/usr/local/sbin/lockd", base: 0x5633d0000000, symbol: "split_lock_burst", offset: 0x1510, size: 0x90, active: true}}, victim.programs[2:]...)
	receiver := renderFarm("Receiver", []program{
		{pid: 1337, comm: "spy", path: "/opt/tools/spy", base: 0x55e3c1200000, symbol: "time_loads", offset: 0x1300, size: 0x120, active: true},
	})
	models := []vmiModel{victim, receiver}
	locks := make([]float64, nBins)
	active := make([]bool, nBins)
	var times []int64
	for t := chanStart; t < windowTo; t += period {
		if g.rng.IntN(4) == 0 { // a 0 bit: no burst
			continue
		}
		start := t + time.Duration(g.rng.NormFloat64()*float64(300*time.Microsecond))
		times = append(times, int64(start))
		for i := binIndex(start); i < binIndex(start+4*time.Millisecond) && i < nBins; i++ {
			if i >= 0 {
				active[i] = true
			}
		}
	}
	loads := make([]float64, nBins)
	vrefs := make([]float64, nBins)
	for i := range locks {
		l, r := 0.4, 6200.0
		if active[i] {
			l = 880
			r += 300
		}
		locks[i] = g.noisy(l)
		vrefs[i] = g.noisy(r)
		ld := 11000.0 // the receiver's loads stall during bursts
		if active[i] {
			ld = 3100
		}
		loads[i] = g.noisy(ld)
	}
	s := newSnapshot(models, host())
	s.Series = []evidence.Series{
		series(victim.vmi.Key(), v1alpha1.EventSplitLocks, locks),
		series(victim.vmi.Key(), v1alpha1.EventBusLocks, locks),
		series(victim.vmi.Key(), v1alpha1.EventLLCReferences, vrefs),
		series(receiver.vmi.Key(), v1alpha1.EventLLCReferences, loads),
	}
	var periods []int64
	for i := 1; i < len(times); i++ {
		periods = append(periods, times[i]-times[i-1])
	}
	mean := int64(0)
	for _, p := range periods {
		mean += p
	}
	if len(periods) > 0 {
		mean /= int64(len(periods))
	}
	s.Detector = evidence.Detector{
		Name:  "bus-lock-bursts/v1",
		Score: 0.88,
		Bursts: []evidence.BurstTrain{{
			VMI: victim.vmi.Key(), Event: v1alpha1.EventSplitLocks, TimesNs: times, PeriodsNs: periods,
			MeanPeriodNs: mean, LocksPerSecond: 880_000,
		}},
		EventRates: rates(s.Series, v1alpha1.EventSplitLocks, 0, nBins),
		Figures:    map[string]float64{"burstsPerSecond": float64(len(times)) / (windowTo - chanStart).Seconds()},
	}
	s.Samples = samples(g, models, map[string][]float64{victim.vmi.Key(): locks, receiver.vmi.Key(): loads},
		map[string][]bool{victim.vmi.Key(): active, receiver.vmi.Key(): after(chanStart)}, 20000)
	s.Processes = processLists(models)
	s.CoScheduling = []evidence.CoScheduling{coSchedule(g, victim.vmi.Key(), receiver.vmi.Key(), 0.22, 0.61)}
	f := finding("payments-db-buslockcovertchannel", v1alpha1.BusLockCovertChannel, "bus-lock-bursts/v1", 0.88, s)
	f.Spec.Suspects = []v1alpha1.Suspect{suspect(receiver, 0.84, "Receiver", s)}
	f.Spec.Evidence = v1alpha1.Evidence{
		Window:          &metav1.Duration{Duration: 2 * time.Second},
		Period:          &metav1.Duration{Duration: period},
		BurstsPerSecond: ptr.To(round(s.Detector.Figures["burstsPerSecond"], 2)),
		LocksPerSecond:  ptr.To(880_000.0),
		Samples:         int64(len(s.Samples)),
		EventRates:      s.Detector.EventRates,
	}
	return finish(f, s)
}

// Huge is the covert channel as a misconfigured agent would capture it: a
// minute of series of 8 VMIs at 1 ms, 60000 samples and long process
// lists: far over the size limit, so Encode must trim it.
func Huge(seed uint64) *Scenario {
	sc := CovertChannel(seed)
	g := &gen{rng: rand.New(rand.NewPCG(seed, 0xbad))}
	s := sc.Snapshot
	const n = 60000
	var series []evidence.Series
	for v := 0; v < 8; v++ {
		for _, e := range []v1alpha1.CounterEvent{v1alpha1.EventLLCReferences, v1alpha1.EventLLCMisses, v1alpha1.EventInstructions, v1alpha1.EventCycles} {
			vals := make([]float64, n)
			for i := range vals {
				vals[i] = g.noisy(5000 + 3000*math.Sin(float64(i)/float64(7+v)))
			}
			vmi := s.VMIs[v%len(s.VMIs)].Key()
			if v >= len(s.VMIs) {
				vmi = fmt.Sprintf("batch/filler-%d", v)
			}
			series = append(series, evidence.Series{VMI: vmi, Event: e, StartNs: -int64(30 * time.Second), StepNs: int64(step), Values: vals})
		}
	}
	s.Series = series
	for len(s.Samples) < n {
		sm := s.Samples[g.rng.IntN(len(s.Samples))]
		sm.TNs = int64(g.rng.Float64()*60e9) - 30e9
		s.Samples = append(s.Samples, sm)
	}
	for i := range s.Processes {
		l := &s.Processes[i]
		for p := int32(3000); p < 4000; p++ {
			l.Processes = append(l.Processes, evidence.Process{PID: p, PPID: 1, Comm: fmt.Sprintf("worker-%d", p), Exe: "/usr/bin/worker",
				Libraries: []string{fmt.Sprintf("/usr/lib/plugins/libplugin%d.so", p), "/usr/lib/x86_64-linux-gnu/libc.so.6"}})
		}
		l.Total = len(l.Processes)
	}
	s.Attribution = nil
	return sc
}

func newSnapshot(models []vmiModel, h evidence.Host) *evidence.Snapshot {
	s := &evidence.Snapshot{
		Format:     evidence.Format,
		Version:    evidence.Version,
		CapturedAt: Onset.Add(2100 * time.Millisecond),
		Onset:      Onset,
		Host:       h,
	}
	for _, m := range models {
		s.VMIs = append(s.VMIs, m.vmi)
	}
	return s
}

func series(vmi string, e v1alpha1.CounterEvent, values []float64) evidence.Series {
	return evidence.Series{VMI: vmi, Event: e, StartNs: int64(windowFrom), StepNs: int64(step), Values: values}
}

func binIndex(t time.Duration) int { return int((t - windowFrom) / step) }

func sum(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// rates are the mean per-second rates of event over bins [from, to).
func rates(series []evidence.Series, e v1alpha1.CounterEvent, from, to int) []v1alpha1.EventRate {
	var out []v1alpha1.EventRate
	for _, s := range series {
		if s.Event != e {
			continue
		}
		secs := float64(int64(to-from)*s.StepNs) / 1e9
		out = append(out, v1alpha1.EventRate{VMI: s.VMI, Event: e, PerSecond: math.Round(sum(s.Values[from:to]) / secs)})
	}
	return out
}

// samples draws overflow samples: one per samplePeriod misses of each VMI,
// from its active code while the attack runs and its background code
// otherwise.
func samples(g *gen, models []vmiModel, misses map[string][]float64, active map[string][]bool, samplePeriod float64) []evidence.Sample {
	var out []evidence.Sample
	for _, m := range models {
		var act, bg []program
		for _, p := range m.programs {
			if p.active {
				act = append(act, p)
			} else {
				bg = append(bg, p)
			}
		}
		acc := g.rng.Float64() * samplePeriod
		for i, n := range misses[m.vmi.Key()] {
			acc += n
			for acc >= samplePeriod {
				acc -= samplePeriod
				pool := bg
				if a := active[m.vmi.Key()]; a != nil && a[i] && len(act) > 0 && g.rng.Float64() < 0.9 {
					pool = act
				}
				sm := evidence.Sample{
					VMI:   m.vmi.Key(),
					VCPU:  int32(g.rng.IntN(int(m.vmi.VCPUs))),
					TNs:   binStart(i) + int64(g.rng.Float64()*float64(step)),
					Event: v1alpha1.EventLLCMisses,
				}
				if g.rng.Float64() < 0.03 {
					// Guest kernel code or an address introspection could
					// not place (freed mapping, JIT).
					sm.RIP = evidence.Hex(0xffffffff81000000 + g.rng.Uint64N(0x800000))
					out = append(out, sm)
					continue
				}
				p := pick(g, pool)
				off := p.offset + g.rng.Uint64N(p.size)&^3
				sm.RIP = evidence.Hex(p.base + off)
				sm.PID, sm.Comm, sm.Path, sm.Offset, sm.Symbol = p.pid, p.comm, p.path, evidence.Hex(off), p.symbol
				out = append(out, sm)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b evidence.Sample) int {
		switch {
		case a.TNs < b.TNs:
			return -1
		case a.TNs > b.TNs:
			return 1
		}
		return 0
	})
	return out
}

// pick draws a program by weight.
func pick(g *gen, pool []program) program {
	total := 0.0
	for _, p := range pool {
		total += weight(p)
	}
	x := g.rng.Float64() * total
	for _, p := range pool {
		if x -= weight(p); x < 0 {
			return p
		}
	}
	return pool[len(pool)-1]
}

func weight(p program) float64 {
	if p.weight == 0 {
		return 1
	}
	return p.weight
}

func after(t time.Duration) []bool {
	out := make([]bool, nBins)
	for i := range out {
		out[i] = time.Duration(binStart(i)) >= t
	}
	return out
}

func processLists(models []vmiModel) []evidence.ProcessList {
	var out []evidence.ProcessList
	for _, m := range models {
		out = append(out, evidence.ProcessList{VMI: m.vmi.Key(), Processes: m.procs, Total: len(m.procs)})
	}
	return out
}

// coSchedule models two VMIs' overlap per 50 ms: around smt of each step on
// SMT siblings and llc on CPUs sharing an LLC.
func coSchedule(g *gen, a, b string, smt, llc float64) evidence.CoScheduling {
	const ostep = 50 * time.Millisecond
	n := int((windowTo - windowFrom) / ostep)
	o := &evidence.Overlap{StartNs: int64(windowFrom), StepNs: int64(ostep), SMTSibling: make([]float64, n), SharedLLC: make([]float64, n)}
	var smtNs, llcNs float64
	for i := 0; i < n; i++ {
		// The host scheduler moves vCPU threads every few hundred ms:
		// the overlap drifts, with noise.
		drift := 0.08 * math.Sin(float64(i)/3.1)
		o.SharedLLC[i] = clamp01(llc + drift + 0.03*g.rng.NormFloat64())
		o.SMTSibling[i] = math.Min(o.SharedLLC[i], clamp01(smt+drift+0.05*g.rng.NormFloat64()))
		smtNs += o.SMTSibling[i] * float64(ostep)
		llcNs += o.SharedLLC[i] * float64(ostep)
	}
	// vCPUs of the pair follow each other on a CPU now and then when the
	// host is busy; more often the more they share a core.
	handovers := int64(smt*90*(windowTo-windowFrom).Seconds() + g.rng.Float64()*6)
	return evidence.CoScheduling{A: a, B: b, WindowNs: int64(windowTo - windowFrom), SMTSiblingNs: int64(smtNs), SharedLLCNs: int64(llcNs), Handovers: handovers, Overlap: o}
}

func clamp01(v float64) float64 { return math.Max(0, math.Min(1, v)) }

// Autocorrelation is the normalised autocorrelation of x at lags 0..maxLag.
func Autocorrelation(x []float64, maxLag int) []float64 {
	mean := sum(x) / float64(len(x))
	var den float64
	for _, v := range x {
		den += (v - mean) * (v - mean)
	}
	out := make([]float64, maxLag+1)
	if den == 0 {
		return out
	}
	for k := 0; k <= maxLag && k < len(x); k++ {
		var num float64
		for i := 0; i+k < len(x); i++ {
			num += (x[i] - mean) * (x[i+k] - mean)
		}
		out[k] = num / den
	}
	return out
}

// Peak finds the oscillation's period in an autocorrelation curve: past
// the first dip below zero (lag 0 always peaks at 1), the first local
// maximum at or above threshold. Peaks at multiples of the period can be
// higher (the message's own structure, such as the 8 bits of a byte); the
// first is the fundamental. It returns 0, 0 when no peak reaches the
// threshold.
func Peak(curve []float64, threshold float64) (lag int, value float64) {
	i := 1
	for i < len(curve) && curve[i] > 0 {
		i++
	}
	for ; i+1 < len(curve); i++ {
		if curve[i] >= threshold && curve[i] >= curve[i-1] && curve[i] >= curve[i+1] {
			return i, curve[i]
		}
	}
	return 0, 0
}

// crossCorrelation correlates x with y shifted by -maxLag..maxLag steps.
func crossCorrelation(vmis string, x, y []float64, maxLag int) *evidence.Correlogram {
	c := &evidence.Correlogram{VMI: vmis, Event: v1alpha1.EventLLCMisses, FirstLagNs: -int64(maxLag) * int64(step), LagStepNs: int64(step)}
	best := math.Inf(-1)
	for k := -maxLag; k <= maxLag; k++ {
		lo, hi := max(0, -k), min(len(x), len(y)-k)
		v := Pearson(x[lo:hi], y[lo+k:hi+k])
		c.Values = append(c.Values, v)
		if v > best {
			best, c.PeakLagNs, c.PeakValue = v, int64(k)*int64(step), v
		}
	}
	return c
}

// Pearson is the correlation coefficient of x and y.
func Pearson(x, y []float64) float64 {
	n := float64(len(x))
	mx, my := sum(x)/n, sum(y)/n
	var sxy, sxx, syy float64
	for i := range x {
		dx, dy := x[i]-mx, y[i]-my
		sxy += dx * dy
		sxx += dx * dx
		syy += dy * dy
	}
	if sxx == 0 || syy == 0 {
		return 0
	}
	return sxy / math.Sqrt(sxx*syy)
}

// Anomalies are the runs of bins whose value exceeds the median by more
// than five median absolute deviations.
func Anomalies(x []float64, startNs, stepNs int64) []evidence.Interval {
	sorted := slices.Clone(x)
	slices.Sort(sorted)
	med := sorted[len(sorted)/2]
	dev := make([]float64, len(x))
	for i, v := range x {
		dev[i] = math.Abs(v - med)
	}
	slices.Sort(dev)
	mad := dev[len(dev)/2]
	limit := med + 5*1.4826*mad
	var out []evidence.Interval
	for i := 0; i < len(x); i++ {
		if x[i] <= limit {
			continue
		}
		j := i
		for j < len(x) && x[j] > limit {
			j++
		}
		out = append(out, evidence.Interval{StartNs: startNs + int64(i)*stepNs, EndNs: startNs + int64(j)*stepNs})
		i = j
	}
	return out
}

func finding(name string, t v1alpha1.ThreatType, detector string, score float64, s *evidence.Snapshot) *v1alpha1.ThreatFinding {
	victim, _ := s.Victim()
	f := &v1alpha1.ThreatFinding{
		TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "ThreatFinding"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace:         "payments",
			Name:              name,
			UID:               types.UID(fmt.Sprintf("3b0c8c1e-6f1f-4a43-9b7e-%012x", len(name)*7919+int(score*1000))),
			CreationTimestamp: metav1.NewTime(Onset.Add(1800 * time.Millisecond)),
			Labels: map[string]string{
				v1alpha1.LabelNode: "worker-3", v1alpha1.LabelVictim: victim.Name, v1alpha1.LabelType: string(t),
			},
		},
		Spec: v1alpha1.ThreatFindingSpec{
			Node:       "worker-3",
			Type:       t,
			Detector:   detector,
			Severity:   v1alpha1.SeverityForScore(score),
			Score:      score,
			Policy:     "protect-payments",
			Victim:     v1alpha1.Victim{Name: victim.Name, UID: victim.UID, Guest: guest(s, victim.Key())},
			FirstSeen:  metav1.NewTime(Onset),
			LastSeen:   metav1.NewTime(Onset.Add(31 * time.Second)),
			Detections: 7,
		},
	}
	s.Finding = evidence.FindingRef{Namespace: f.Namespace, Name: f.Name, UID: f.UID, Type: t, Node: f.Spec.Node, Detector: detector, Severity: f.Spec.Severity, Score: score}
	return f
}

func guest(s *evidence.Snapshot, vmi string) []v1alpha1.GuestProgram {
	for _, a := range evidence.Attribute(s.Samples) {
		if a.VMI == vmi {
			return a.Programs[:min(len(a.Programs), 3)]
		}
	}
	return nil
}

func suspect(m vmiModel, score float64, role string, s *evidence.Snapshot) v1alpha1.Suspect {
	return v1alpha1.Suspect{Namespace: m.vmi.Namespace, Name: m.vmi.Name, UID: m.vmi.UID, Score: score, Role: role, Guest: guest(s, m.vmi.Key())}
}

// finish adds the operator's response: the victim migrated from worker-3
// to worker-5, and the Events recorded on the way.
func finish(f *v1alpha1.ThreatFinding, s *evidence.Snapshot) *Scenario {
	at := func(d time.Duration) *metav1.Time { return ptr.To(metav1.NewTime(Onset.Add(d))) }
	created := f.CreationTimestamp.Time
	started, done := at(2900*time.Millisecond), at(39*time.Second)
	f.Spec.Victim.Guest = guest(s, f.Namespace+"/"+f.Spec.Victim.Name)
	f.Annotations = map[string]string{}
	f.Status = v1alpha1.ThreatFindingStatus{
		ObservedGeneration: 3,
		Phase:              v1alpha1.PhaseMitigated,
		Policy:             "protect-payments",
		Action:             v1alpha1.ActionMigrate,
		Conditions: []metav1.Condition{
			{Type: v1alpha1.FindingActionable, Status: metav1.ConditionTrue, Reason: "PolicyMatched", ObservedGeneration: 3,
				Message: fmt.Sprintf("%s finding on a VMI governed by protect-payments (action Migrate, minimum High)", f.Spec.Severity), LastTransitionTime: metav1.NewTime(created.Add(400 * time.Millisecond))},
			{Type: v1alpha1.FindingMigrating, Status: metav1.ConditionFalse, Reason: "MigrationSucceeded", ObservedGeneration: 3,
				Message: "payments-db moved from worker-3 to worker-5", LastTransitionTime: *done},
			{Type: v1alpha1.FindingMitigated, Status: metav1.ConditionTrue, Reason: "MigrationSucceeded", ObservedGeneration: 3,
				Message: "payments-db now runs on worker-5, away from the suspects", LastTransitionTime: *done},
		},
		Migration: &v1alpha1.MigrationStatus{
			Name: f.Spec.Victim.Name + "-sidewatch-1", Attempts: 1, SourceNode: "worker-3", TargetNode: "worker-5",
			ExcludedNodes: []string{"worker-3"}, StartTime: started, CompletionTime: done,
			Duration: &metav1.Duration{Duration: done.Sub(started.Time).Round(time.Second)}, Result: "Succeeded",
		},
		Message:      "Victim migrated to worker-5.",
		ResolvedTime: done,
	}
	sc := &Scenario{Finding: f, Snapshot: s}
	ev := func(reason, typ, msg string, t *metav1.Time, kind, name string) corev1.Event {
		return corev1.Event{
			ObjectMeta:          metav1.ObjectMeta{Namespace: f.Namespace, Name: fmt.Sprintf("%s.%x", name, t.UnixNano())},
			InvolvedObject:      corev1.ObjectReference{Kind: kind, Namespace: f.Namespace, Name: name, APIVersion: v1alpha1.GroupVersion.String(), UID: f.UID},
			Reason:              reason,
			Message:             msg,
			Type:                typ,
			EventTime:           metav1.NewMicroTime(t.Time),
			ReportingController: "sidewatch.io/operator",
			ReportingInstance:   "sidewatch-operator-6f7c9d-x2x8q",
			Action:              "Migrate",
		}
	}
	sc.Events = []corev1.Event{
		ev("ThreatDetected", corev1.EventTypeWarning, fmt.Sprintf("%s (severity %s, score %.2f) against VMI payments-db on node worker-3", f.Spec.Type, f.Spec.Severity, f.Spec.Score), at(2200*time.Millisecond), "ThreatFinding", f.Name),
		ev("MigrationStarted", corev1.EventTypeNormal, "attempt 1: migration payments-db-sidewatch-1 moves VMI payments-db off node worker-3 (excluded nodes: worker-3)", started, "ThreatFinding", f.Name),
		ev("MigrationSucceeded", corev1.EventTypeNormal, "migration payments-db-sidewatch-1 moved VMI payments-db from node worker-3 to node worker-5 in 36s", done, "ThreatFinding", f.Name),
	}
	sc.Events[0].Action = "Detect"
	return sc
}
