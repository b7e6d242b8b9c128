//go:build linux

package agent_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/guest"
	"github.com/sidewatch/sidewatch/kernel"
	"github.com/sidewatch/sidewatch/node-agent/agent"
	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/collect/perf"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
)

// Overflow samples of a real QEMU guest's vCPU threads, binned in the
// kernel by the eBPF sampler and read at each drain, reach the detectors
// through the whole agent loop; the heartbeat says where samples come
// from. Without the sampler the same loop falls back to ring buffers and
// says why.
func TestKernelSamplerThroughTheLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a QEMU guest and loads eBPF programs")
	}
	if os.Geteuid() != 0 {
		t.Skip("loading eBPF programs needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	g, err := guest.Start(ctx, guest.Config{Namespace: "tenant-b", Name: "spy", Role: "attacker"})
	if g != nil {
		defer g.Stop()
	}
	if err != nil {
		t.Fatalf("booting the guest: %v", err)
	}
	l, err := kernel.Load(ctx, kernel.Options{})
	if err != nil {
		t.Fatalf("loading the eBPF programs: %v", err)
	}
	defer l.Close()
	if p, ok := l.Status().Program(kernel.ProgramSampler); !ok || !p.Loaded {
		t.Fatalf("sampler program %+v", p)
	}

	for _, tc := range []struct {
		name       string
		sampler    perf.KernelSampler
		reason     string
		wantMode   string
		wantSource string
	}{
		{name: "kernel", sampler: l, wantMode: collect.SampleModeKernel, wantSource: "ebpf:sampler"},
		{name: "ring", reason: "eBPF sampler not loaded: test", wantMode: collect.SampleModeRing, wantSource: "perf:ring"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			col := perf.New(testr.New(t))
			col.UseKernelSampler(tc.sampler, tc.reason)
			a, det := softwareAgent(t, col,
				discovery.VMI{Ref: discovery.VMIRef{Namespace: "tenant-b", Name: "spy"}, UID: types.UID("u-spy"), Labels: map[string]string{"protect": "yes"}},
			)
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- a.Run(runCtx) }()
			defer func() {
				stop()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}()

			// TCG vCPUs of a spinning guest run most of the time: a
			// sample per ms of vCPU time gives hundreds within seconds.
			var samples int
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				det.mu.Lock()
				samples = 0
				for _, n := range det.samples {
					samples += n
				}
				det.mu.Unlock()
				if samples >= 100 {
					break
				}
			}
			if samples < 100 {
				t.Fatalf("%d samples reached the detector in 20 s", samples)
			}
			st := a.Stats()
			if st.SampleMode != tc.wantMode {
				t.Errorf("sample mode %q, want %q", st.SampleMode, tc.wantMode)
			}
			var sig *v1alpha1.SignalStatus
			caps := a.Capabilities()
			for i := range caps.Signals {
				if caps.Signals[i].Name == agent.SignalSamples {
					sig = &caps.Signals[i]
				}
			}
			if sig == nil || !sig.Available || sig.Source != tc.wantSource || sig.Reason != tc.reason {
				t.Errorf("samples signal %+v, want source %q reason %q", sig, tc.wantSource, tc.reason)
			}
		})
	}
}
