package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/internal/guest"
	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/record"
)

// covertTrace writes a clocked cache-oscillation covert channel from
// prod/sender to prod/receiver, with a benign neighbour prod/web.
func covertTrace(w io.Writer, seconds int) {
	const period, interval, samplePeriod = int64(200_000_000), int64(100_000_000), 10000.0
	rng := rand.New(rand.NewPCG(1, 2))
	fmt.Fprintf(w, "# sidewatch-trace: v1\n# interval: 100ms\n# sample_period.llc_misses: 10000\ntime_ns,node,namespace,vmi,vcpu,event,value\n")
	t0 := time.Now().Add(-time.Hour).UnixNano()
	carry := map[string]float64{}
	for t := interval; t <= int64(seconds)*1e9; t += interval {
		bit := ((t-interval)/period)%2 == 0 || rng.IntN(4) == 0
		rates := map[string]float64{"sender": 2e5, "receiver": 4e5, "web": 6e5}
		if bit {
			rates["sender"], rates["receiver"] = 4e6, 3e6
		}
		for _, vm := range []string{"receiver", "sender", "web"} {
			miss := rates[vm] * float64(interval) / 1e9 * (0.9 + 0.2*rng.Float64())
			n := carry[vm] + miss/samplePeriod
			for k := 0; k < int(n); k++ {
				fmt.Fprintf(w, "%d,n1,prod,%s,0,sample.llc_misses,0x%x\n", t0+t-interval+int64(float64(interval)*(float64(k)+0.5)/float64(int(n))), vm, 0x7f0000001000+rng.IntN(64)*64)
			}
			carry[vm] = n - float64(int(n))
			fmt.Fprintf(w, "%d,n1,prod,%s,0,llc_references,%d\n%d,n1,prod,%s,0,llc_misses,%d\n", t0+t, vm, int64(4*miss), t0+t, vm, int64(miss))
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// The agent process's `run` against a real API server: it heartbeats,
// watches the VMIs of its node and the policies, and, fed by a recorded
// covert channel (--replay, as the demo runs it on a machine without a
// PMU), writes a ThreatFinding; then it shuts down cleanly on cancel.
func TestRunAgainstTheAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	env, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.Kubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	scheme, _ := discovery.Scheme()
	k8s, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"sidewatch-system", "prod"} {
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"receiver", "sender", "web", "elsewhere"} {
		node := "n1"
		if name == "elsewhere" {
			node = "n2"
		}
		v := &kubevirtv1.VirtualMachineInstance{
			ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name, Labels: map[string]string{kubevirtv1.NodeNameLabel: node, "app": name}},
			Spec:       kubevirtv1.VirtualMachineInstanceSpec{Domain: kubevirtv1.DomainSpec{Devices: kubevirtv1.Devices{}}},
		}
		if err := k8s.Create(ctx, v); err != nil {
			t.Fatal(err)
		}
		v.Status = kubevirtv1.VirtualMachineInstanceStatus{NodeName: node, Phase: kubevirtv1.Running,
			ActivePods: map[types.UID]string{types.UID("pod-" + name): node}}
		if err := k8s.Status().Update(ctx, v); err != nil {
			if err := k8s.Update(ctx, v); err != nil { // no status subresource in the test CRD
				t.Fatal(err)
			}
		}
	}
	pol := &v1alpha1.SideChannelPolicy{ObjectMeta: metav1.ObjectMeta{Name: "protect-receiver"},
		Spec: v1alpha1.SideChannelPolicySpec{VMISelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "receiver"}}}}
	if err := k8s.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	tracePath := filepath.Join(t.TempDir(), "covert.trace")
	var buf bytes.Buffer
	covertTrace(&buf, 40)
	if err := os.WriteFile(tracePath, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	addr := freeAddr(t)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, testr.New(t), &runFlags{
			commonFlags: commonFlags{node: "n1", procRoot: "/proc", sysRoot: "/sys"},
			namespace:   "sidewatch-system", kubeconfig: kubeconfig, metricsAddr: addr,
			heartbeat: 6 * time.Second, rescan: time.Second, replayPath: tracePath, replaySpeed: 20,
			qps: 50, burst: 100, findingRate: 5, findingBurst: 10, findingUpdate: time.Second, maxFindings: 10,
		})
	}()

	var finding *v1alpha1.ThreatFinding
	deadline := time.Now().Add(60 * time.Second)
	for finding == nil && time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("run ended early: %v", err)
		default:
		}
		var l v1alpha1.ThreatFindingList
		if err := k8s.List(ctx, &l, client.InNamespace("prod")); err != nil {
			t.Fatal(err)
		}
		if len(l.Items) > 0 {
			finding = &l.Items[0]
		}
		time.Sleep(200 * time.Millisecond)
	}
	if finding == nil {
		t.Fatal("no ThreatFinding within 60 s")
	}
	s := finding.Spec
	if s.Type != v1alpha1.CacheCovertChannel || s.Victim.Name != "receiver" || s.Victim.UID == "" || s.Node != "n1" ||
		len(s.Suspects) == 0 || s.Suspects[0].Name != "sender" || finding.Labels[v1alpha1.LabelNode] != "n1" || s.Policy != "protect-receiver" {
		t.Errorf("finding %+v labels %v", s, finding.Labels)
	}

	// Its evidence snapshot, as docs/forensics.md says.
	var snap *evidence.Snapshot
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		_ = k8s.Get(ctx, client.ObjectKeyFromObject(finding), finding)
		if snap, _, err = evidence.Load(ctx, k8s, finding); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("evidence snapshot: %v", err)
	}
	if snap.Host.Node != "n1" || snap.Host.Vendor == "" || snap.Host.LogicalCPUs == 0 || len(snap.Series) == 0 || len(snap.VMIs) < 2 {
		t.Errorf("snapshot host %+v, %d series, vmis %+v", snap.Host, len(snap.Series), snap.VMIs)
	}

	// The heartbeat Lease, per the contract, renewed every 2 s with the
	// agent's live counts (the first beat precedes the informers' sync).
	var lease coordinationv1.Lease
	var caps v1alpha1.NodeCapabilities
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: "sidewatch-system", Name: "sidewatch-agent-n1"}, &lease); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(lease.Annotations[v1alpha1.AnnotationCapabilities]), &caps); err != nil {
			t.Fatal(err)
		}
		if caps.VMIs == 3 {
			break
		}
	}
	if !caps.Monitorable || !strings.Contains(caps.Message, "replaying") || caps.VMIs != 3 || *lease.Spec.LeaseDurationSeconds != 6 {
		t.Errorf("heartbeat caps %+v, lease %+v", caps, lease.Spec)
	}

	// Metrics and health.
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ok", "/metrics": "sidewatch_agent_detections_total{type=\"CacheCovertChannel\"}"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("%s: %d %q", path, resp.StatusCode, body[:min(len(body), 300)])
		}
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not stop within 30 s of cancellation")
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Error("the metrics server still answers after shutdown")
	}
}

// On a node without hardware counters the live agent reports it in the
// heartbeat and keeps running: no error loop, no crash.
func TestRunWithoutHardwareCounters(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane")
	}
	if _, err := os.Stat("/sys/bus/event_source/devices/cpu"); err == nil {
		t.Skip("this machine has a CPU PMU")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	env, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.Kubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	scheme, _ := discovery.Scheme()
	k8s, _ := client.New(env.Config, client.Options{Scheme: scheme})
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sidewatch-system"}}); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, &v1alpha1.SideChannelPolicy{ObjectMeta: metav1.ObjectMeta{Name: "all"}}); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, testr.New(t), &runFlags{
			commonFlags: commonFlags{node: "bare", procRoot: "/proc", sysRoot: "/sys"},
			namespace:   "sidewatch-system", kubeconfig: kubeconfig, metricsAddr: "0",
			heartbeat: 6 * time.Second, rescan: 100 * time.Millisecond, qps: 50, burst: 100,
			findingRate: 2, findingBurst: 5, findingUpdate: time.Second, maxFindings: 10,
		})
	}()
	var caps v1alpha1.NodeCapabilities
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var lease coordinationv1.Lease
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: "sidewatch-system", Name: "sidewatch-agent-bare"}, &lease); err == nil {
			_ = json.Unmarshal([]byte(lease.Annotations[v1alpha1.AnnotationCapabilities]), &caps)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if caps.Monitorable || caps.Reason != v1alpha1.ReasonNoHardwareCounters || caps.Message != "node bare: no hardware counters" {
		t.Fatalf("heartbeat %+v", caps)
	}
	time.Sleep(2 * time.Second) // several rescans: still running
	select {
	case err := <-done:
		t.Fatalf("run ended on a node without counters: %v", err)
	default:
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// `sidewatch-agent record` on a real QEMU guest: software events standing
// in for hardware counters (this machine has no PMU) through the same
// groups and rings, written as a valid v1 trace.
func TestRecordRealGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a QEMU guest")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g, err := guest.Start(ctx, guest.Config{Namespace: "rec", Name: "vm", Role: "busy"})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	out := filepath.Join(t.TempDir(), "rec.trace")
	f := &recordFlags{
		commonFlags: commonFlags{node: "n1", procRoot: "/proc", sysRoot: "/sys"},
		output:      out, duration: 2 * time.Second, interval: 100 * time.Millisecond,
		events:  []string{"cycles", "llc_references", "llc_misses", "l1d_misses", "instructions"},
		sampled: []string{"cycles"}, samplePeriod: 1_000_000, vmis: []string{"rec/vm"}, standIn: true,
	}
	if err := runRecord(ctx, testr.New(t), f); err != nil {
		t.Fatal(err)
	}
	file, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	r, err := record.NewReader(file)
	if err != nil {
		t.Fatal(err)
	}
	meta := map[string]string{}
	for _, m := range r.Meta() {
		meta[m.Key] = m.Value
	}
	if !strings.Contains(meta["stand_in"], "cycles=task_clock") || meta["warning"] == "" || meta["sample_period.cycles"] != "1000000" || meta["interval"] != "100ms" {
		t.Errorf("metadata %v", meta)
	}
	counters, samples := map[string]int{}, 0
	vcpus := map[int]bool{}
	var cycles uint64
	for {
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if row.Node != "n1" || row.Namespace != "rec" || row.VMI != "vm" {
			t.Fatalf("row %+v", row)
		}
		vcpus[row.VCPU] = true
		if row.Sample {
			samples++
			// TCG runs the guest as host code: no guest IP to give.
			if row.Value != 0 {
				t.Errorf("sample with a host address written as a guest IP: %+v", row)
			}
			continue
		}
		counters[row.Event]++
		if row.Event == "cycles" {
			cycles += row.Value
		}
	}
	if len(vcpus) != 2 || counters["cycles"] < 20 || counters["llc_misses"] < 20 || counters["instructions"] != 0 || samples == 0 || cycles == 0 {
		t.Errorf("vcpus %v counters %v samples %d cycles(task_clock) %d", vcpus, counters, samples, cycles)
	}

	// Without --stand-in on a machine without a PMU: a clear error.
	if _, err := os.Stat("/sys/bus/event_source/devices/cpu"); err != nil {
		f.standIn = false
		err := runRecord(ctx, testr.New(t), f)
		if err == nil || !strings.Contains(err.Error(), "no hardware counters") || !strings.Contains(err.Error(), "--stand-in") {
			t.Errorf("record without counters: %v", err)
		}
	}
}

func TestFlagErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--node-name", ""}, "--node-name is empty"},
		{[]string{"run", "--node-name", "n", "--proc-root", "/nonexistent"}, "--proc-root /nonexistent"},
		{[]string{"record", "--node-name", "n", "--proc-root", "/proc", "--events", "bogus"}, `unknown event "bogus"`},
		{[]string{"record", "--node-name", "n", "--proc-root", "/proc", "--interval", "1ms"}, "--interval"},
		{[]string{"probe", "--proc-root", "/proc", "--sys-root", "/sys", "-o", "yaml"}, "want json or text"},
	} {
		cmd := newRootCommand()
		cmd.SetArgs(tt.args)
		cmd.SetOut(io.Discard)
		err := cmd.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err %v, want %q", tt.args, err, tt.want)
		}
	}
	var out bytes.Buffer
	cmd := newRootCommand()
	cmd.SetArgs([]string{"probe", "--proc-root", "/proc", "--sys-root", "/sys", "--node-name", "x", "-o", "json"})
	cmd.SetOut(&out)
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	var caps v1alpha1.NodeCapabilities
	if err := json.Unmarshal(out.Bytes(), &caps); err != nil || caps.Node != "x" || caps.PMU.Vendor == "" {
		t.Errorf("probe -o json: %v %+v", err, caps)
	}
}
