package fakevirt_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/fakevirt"
)

var (
	k8s  client.Client
	fake *fakevirt.Controller
)

const poolLabel = "fakevirt-test/pool"

var runs atomic.Int64

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startCtx, startCancel := context.WithTimeout(ctx, 15*time.Minute)
	env, err := controlplane.Start(startCtx, controlplane.Options{})
	startCancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()

	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = virtv1.AddToScheme(scheme)
	k8s, err = client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fake = fakevirt.New(mgr.GetClient(), fakevirt.Options{
		StepDelay:            20 * time.Millisecond,
		UnschedulableTimeout: time.Second,
		KeepFinalized:        2,
	})
	if err := fake.SetupWithManager(mgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	code := m.Run()
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
	}
	return code
}

// pool makes a namespace and nodes for one test. Every VMI of the test
// selects the pool's label, so other tests' nodes never receive it.
type pool struct {
	t    *testing.T
	ns   string
	name string
}

func newPool(t *testing.T, nodes ...string) *pool {
	t.Helper()
	// A run counter keeps names unique under -count=N.
	name := fmt.Sprintf("%s-%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), runs.Add(1))
	p := &pool{t: t, ns: name, name: name}
	ctx := context.Background()
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		p.node(n, nil)
	}
	return p
}

func (p *pool) node(name string, labels map[string]string) string {
	p.t.Helper()
	l := map[string]string{poolLabel: p.name}
	for k, v := range labels {
		l[k] = v
	}
	full := p.name + "-" + name
	if err := fakevirt.CreateNode(context.Background(), k8s, fakevirt.NewNode(full, l)); err != nil {
		p.t.Fatal(err)
	}
	return full
}

func (p *pool) vmi(name, node string) types.NamespacedName {
	p.t.Helper()
	v := fakevirt.NewVMI(p.ns, name, p.name+"-"+node, nil)
	v.Spec.NodeSelector = map[string]string{poolLabel: p.name}
	if err := fakevirt.CreateVMI(context.Background(), k8s, v); err != nil {
		p.t.Fatal(err)
	}
	return types.NamespacedName{Namespace: p.ns, Name: name}
}

func (p *pool) migrate(name string, vmi types.NamespacedName, added map[string]string) types.NamespacedName {
	p.t.Helper()
	m := &virtv1.VirtualMachineInstanceMigration{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: name},
		Spec:       virtv1.VirtualMachineInstanceMigrationSpec{VMIName: vmi.Name, AddedNodeSelector: added},
	}
	if err := k8s.Create(context.Background(), m); err != nil {
		p.t.Fatal(err)
	}
	return client.ObjectKeyFromObject(m)
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, lastErr)
}

func waitFinal(t *testing.T, key types.NamespacedName) *virtv1.VirtualMachineInstanceMigration {
	t.Helper()
	m := &virtv1.VirtualMachineInstanceMigration{}
	eventually(t, 10*time.Second, "migration "+key.String()+" to finish", func() (bool, error) {
		if err := k8s.Get(context.Background(), key, m); err != nil {
			return false, err
		}
		return m.IsFinal(), nil
	})
	return m
}

func getVMI(t *testing.T, key types.NamespacedName) *virtv1.VirtualMachineInstance {
	t.Helper()
	v := &virtv1.VirtualMachineInstance{}
	if err := k8s.Get(context.Background(), key, v); err != nil {
		t.Fatal(err)
	}
	return v
}

func phases(m *virtv1.VirtualMachineInstanceMigration) []string {
	var out []string
	for _, p := range m.Status.PhaseTransitionTimestamps {
		out = append(out, string(p.Phase))
	}
	return out
}

func TestSucceedsThroughEveryPhase(t *testing.T) {
	p := newPool(t, "a", "b")
	vmi := p.vmi("vm", "a")
	m := waitFinal(t, p.migrate("m1", vmi, nil))

	want := "Pending Scheduling Scheduled PreparingTarget TargetReady Running Succeeded"
	if got := strings.Join(phases(m), " "); got != want {
		t.Errorf("phases = %s, want %s", got, want)
	}
	v := getVMI(t, vmi)
	if v.Status.NodeName != p.name+"-b" {
		t.Errorf("VMI node = %s, want %s-b", v.Status.NodeName, p.name)
	}
	if v.Labels[virtv1.NodeNameLabel] != p.name+"-b" {
		t.Errorf("VMI label %s = %s, want %s-b", virtv1.NodeNameLabel, v.Labels[virtv1.NodeNameLabel], p.name)
	}
	ms := v.Status.MigrationState
	if ms == nil || !ms.Completed || ms.Failed || ms.MigrationUID != m.UID || ms.SourceNode != p.name+"-a" ||
		ms.TargetNode != p.name+"-b" || ms.StartTimestamp == nil || ms.EndTimestamp == nil {
		t.Errorf("VMI migrationState = %+v, want completed from a to b by %s with timestamps", ms, m.UID)
	}
	if m.Status.MigrationState == nil || !m.Status.MigrationState.Completed {
		t.Errorf("migration's migrationState = %+v, want a completed copy of the VMI's", m.Status.MigrationState)
	}
	// Like virt-controller, the finalizer goes in a write after the status.
	eventually(t, 5*time.Second, "the finalizer to be removed", func() (bool, error) {
		err := k8s.Get(context.Background(), client.ObjectKeyFromObject(m), m)
		return len(m.Finalizers) == 0, err
	})
}

func TestHonoursAddedNodeSelector(t *testing.T) {
	p := newPool(t, "a")
	// b is empty and sorts first, so it would win without the selector.
	p.node("b", nil)
	p.node("c", map[string]string{"target": "yes"})
	p.node("d", map[string]string{"target": "no"})
	// c would lose on load: give it a VMI.
	p.vmi("filler", "c")
	vmi := p.vmi("vm", "a")
	m := waitFinal(t, p.migrate("m1", vmi, map[string]string{"target": "yes"}))
	if m.Status.Phase != virtv1.MigrationSucceeded {
		t.Fatalf("phase = %s, want Succeeded", m.Status.Phase)
	}
	if got := getVMI(t, vmi).Status.NodeName; got != p.name+"-c" {
		t.Errorf("target = %s, want %s-c, the only node matching addedNodeSelector", got, p.name)
	}
}

func TestVMINodeSelectorWinsOverAdded(t *testing.T) {
	p := newPool(t, "a", "b")
	vmi := p.vmi("vm", "a")
	// addedNodeSelector tries to override the VMI's pool key; KubeVirt keeps
	// the VMI's value, so the migration still lands in the pool.
	m := waitFinal(t, p.migrate("m1", vmi, map[string]string{poolLabel: "elsewhere"}))
	if m.Status.Phase != virtv1.MigrationSucceeded {
		t.Fatalf("phase = %s, want Succeeded", m.Status.Phase)
	}
}

func TestUnschedulableTargetFails(t *testing.T) {
	p := newPool(t, "a", "b")
	vmi := p.vmi("vm", "a")
	start := time.Now()
	m := waitFinal(t, p.migrate("m1", vmi, map[string]string{"no-such": "label"}))
	if m.Status.Phase != virtv1.MigrationFailed {
		t.Fatalf("phase = %s, want Failed", m.Status.Phase)
	}
	if time.Since(start) < time.Second {
		t.Errorf("failed after %s, want after the 1s unschedulable timeout", time.Since(start))
	}
	if got := strings.Join(phases(m), " "); got != "Pending Scheduling Failed" {
		t.Errorf("phases = %s, want Pending Scheduling Failed", got)
	}
	if ms := m.Status.MigrationState; ms == nil || !strings.Contains(ms.FailureReason, "unschedulable") {
		t.Errorf("failure reason = %+v, want it to say the target is unschedulable", ms)
	}
	if got := getVMI(t, vmi).Status.NodeName; got != p.name+"-a" {
		t.Errorf("VMI moved to %s, want it still on a", got)
	}
}

func TestInjectedFailureThenSuccess(t *testing.T) {
	p := newPool(t, "a", "b")
	vmi := p.vmi("vm", "a")
	fake.FailNext(vmi, 1, "target virt-handler lost")
	m := waitFinal(t, p.migrate("m1", vmi, nil))
	if m.Status.Phase != virtv1.MigrationFailed {
		t.Fatalf("first migration phase = %s, want Failed", m.Status.Phase)
	}
	v := getVMI(t, vmi)
	if v.Status.NodeName != p.name+"-a" {
		t.Errorf("VMI moved to %s after a failed migration", v.Status.NodeName)
	}
	if ms := v.Status.MigrationState; ms == nil || !ms.Failed || ms.FailureReason != "target virt-handler lost" {
		t.Errorf("VMI migrationState = %+v, want Failed with the injected reason", ms)
	}
	if got := phases(m); got[len(got)-2] != "Running" {
		t.Errorf("phases = %v, want the failure while Running", got)
	}
	m2 := waitFinal(t, p.migrate("m2", vmi, nil))
	if m2.Status.Phase != virtv1.MigrationSucceeded {
		t.Errorf("second migration phase = %s, want Succeeded", m2.Status.Phase)
	}
}

func TestNotLiveMigratableRefused(t *testing.T) {
	p := newPool(t, "a", "b")
	vmi := p.vmi("vm", "a")
	if err := fakevirt.SetLiveMigratable(context.Background(), k8s, vmi, false, "DisksNotLiveMigratable", "cannot migrate VMI: PVC root is not shared"); err != nil {
		t.Fatal(err)
	}
	m := waitFinal(t, p.migrate("m1", vmi, nil))
	if m.Status.Phase != virtv1.MigrationFailed {
		t.Fatalf("phase = %s, want Failed", m.Status.Phase)
	}
	if ms := m.Status.MigrationState; ms == nil || !strings.Contains(ms.FailureReason, "DisksNotLiveMigratable") {
		t.Errorf("failure = %+v, want the LiveMigratable reason", ms)
	}
}

func TestSecondMigrationOfOneVMIRefused(t *testing.T) {
	p := newPool(t, "a", "b", "c")
	vmi := p.vmi("vm", "a")
	fake.Hold(vmi, virtv1.MigrationRunning)
	first := p.migrate("m1", vmi, nil)
	eventually(t, 5*time.Second, "first migration to run", func() (bool, error) {
		m := &virtv1.VirtualMachineInstanceMigration{}
		err := k8s.Get(context.Background(), first, m)
		return m.Status.Phase == virtv1.MigrationRunning, err
	})
	second := waitFinal(t, p.migrate("m2", vmi, nil))
	if second.Status.Phase != virtv1.MigrationFailed || second.Status.MigrationState == nil ||
		!strings.Contains(second.Status.MigrationState.FailureReason, "in progress") {
		t.Errorf("second migration = %s %+v, want Failed because m1 is in progress", second.Status.Phase, second.Status.MigrationState)
	}
	fake.Release(vmi)
	if m := waitFinal(t, first); m.Status.Phase != virtv1.MigrationSucceeded {
		t.Errorf("first migration phase = %s, want Succeeded after release", m.Status.Phase)
	}
}

func TestDeleteInFlightAborts(t *testing.T) {
	p := newPool(t, "a", "b")
	vmi := p.vmi("vm", "a")
	fake.Hold(vmi, virtv1.MigrationRunning)
	defer fake.Release(vmi)
	key := p.migrate("m1", vmi, nil)
	m := &virtv1.VirtualMachineInstanceMigration{}
	eventually(t, 5*time.Second, "migration to run", func() (bool, error) {
		err := k8s.Get(context.Background(), key, m)
		return m.Status.Phase == virtv1.MigrationRunning, err
	})
	if err := k8s.Delete(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "migration to be gone", func() (bool, error) {
		err := k8s.Get(context.Background(), key, m)
		return apierrors.IsNotFound(err), nil
	})
	v := getVMI(t, vmi)
	if ms := v.Status.MigrationState; ms == nil || !ms.Failed || !ms.AbortRequested || v.Status.NodeName != p.name+"-a" {
		t.Errorf("VMI = node %s, state %+v; want it on a with an aborted migration", v.Status.NodeName, ms)
	}
}

func TestMigrationOfMissingVMIDeleted(t *testing.T) {
	p := newPool(t, "a")
	key := p.migrate("m1", types.NamespacedName{Namespace: p.ns, Name: "ghost"}, nil)
	eventually(t, 5*time.Second, "migration of a missing VMI to be deleted", func() (bool, error) {
		err := k8s.Get(context.Background(), key, &virtv1.VirtualMachineInstanceMigration{})
		return apierrors.IsNotFound(err), nil
	})
}

func TestFinishedMigrationsGarbageCollected(t *testing.T) {
	p := newPool(t, "a", "b")
	vmi := p.vmi("vm", "a")
	for i := 1; i <= 4; i++ {
		waitFinal(t, p.migrate(fmt.Sprintf("m%d", i), vmi, nil))
	}
	eventually(t, 5*time.Second, "only the 2 newest migrations to remain", func() (bool, error) {
		var list virtv1.VirtualMachineInstanceMigrationList
		if err := k8s.List(context.Background(), &list, client.InNamespace(p.ns)); err != nil {
			return false, err
		}
		var names []string
		for _, m := range list.Items {
			names = append(names, m.Name)
		}
		return strings.Join(names, ",") == "m3,m4", fmt.Errorf("have %v", names)
	})
	// Four migrations between two nodes: the VMI ping-ponged back to a.
	if got := getVMI(t, vmi).Status.NodeName; got != p.name+"-a" {
		t.Errorf("VMI on %s after 4 migrations between a and b, want a", got)
	}
}

func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		labels, selector map[string]string
		want             bool
	}{
		{map[string]string{"a": "1"}, nil, true},                                   // empty selector matches all
		{map[string]string{"a": "1", "b": "2"}, map[string]string{"a": "1"}, true}, // subset
		{map[string]string{"a": "1"}, map[string]string{"a": "2"}, false},          // other value
		{map[string]string{}, map[string]string{"a": ""}, false},                   // absent is not empty
		{map[string]string{"a": ""}, map[string]string{"a": ""}, true},             // empty value present
	} {
		if got := fakevirt.Matches(tc.labels, tc.selector); got != tc.want {
			t.Errorf("Matches(%v, %v) = %v, want %v", tc.labels, tc.selector, got, tc.want)
		}
	}
}
