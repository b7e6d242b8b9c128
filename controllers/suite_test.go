package controllers

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/fakevirt"
)

// The envtest suite: one real kube-apiserver for the package, a fakevirt
// stand-in for KubeVirt running as a cluster administrator, and for each
// test an operator manager running with exactly the RBAC that
// config/rbac/role.yaml grants, so a missing permission fails the tests.

const (
	operatorNS   = DefaultNamespace
	operatorUser = "sidewatch-operator"
	poolLabel    = "sidewatch-test/pool"
)

var (
	env        *controlplane.Env
	admin      client.Client
	scheme     = runtime.NewScheme()
	operatorRC *rest.Config
	virt       *fakevirt.Controller
	runID      atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	if os.Getenv("SIDEWATCH_TEST_LOG") != "" {
		ctrl.SetLogger(zap.New(zap.UseDevMode(true)))
	} else {
		ctrl.SetLogger(logr.Discard())
		// client-go's event broadcaster logs through klog, e.g. Events
		// still pending when a test stops its operator.
		klog.SetLogger(logr.Discard())
	}
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme, virtv1.AddToScheme} {
		if err := add(scheme); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startCtx, startCancel := context.WithTimeout(ctx, 15*time.Minute)
	var err error
	env, err = controlplane.Start(startCtx, controlplane.Options{})
	startCancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if admin, err = client.New(env.Config, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNS}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if operatorRC, err = grantOperatorRBAC(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "rbac:", err)
		return 1
	}

	// KubeVirt's stand-in, in its own manager as in a real cluster.
	vmgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	virt = fakevirt.New(vmgr.GetClient(), fakevirt.Options{StepDelay: 30 * time.Millisecond, UnschedulableTimeout: 3 * time.Second, KeepFinalized: -1})
	if err := virt.SetupWithManager(vmgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- vmgr.Start(ctx) }()

	code := m.Run()
	cancel()
	<-done
	return code
}

// grantOperatorRBAC installs the operator's roles (config/rbac/role.yaml and
// leader_election_role.yaml), binds them to a
// certificate user, and returns that user's config.
func grantOperatorRBAC(ctx context.Context) (*rest.Config, error) {
	root, err := controlplane.RepoRoot()
	if err != nil {
		return nil, err
	}
	var raw []byte
	for _, name := range []string{"role.yaml", "leader_election_role.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, "config", "rbac", name))
		if err != nil {
			return nil, err
		}
		raw = append(append(raw, b...), []byte("\n---\n")...)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	subject := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: operatorUser}}
	for {
		var u map[string]any
		if err := dec.Decode(&u); err != nil {
			break
		}
		if u == nil {
			continue
		}
		switch u["kind"] {
		case "ClusterRole":
			var cr rbacv1.ClusterRole
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u, &cr); err != nil {
				return nil, err
			}
			if err := admin.Create(ctx, &cr); err != nil {
				return nil, err
			}
			if err := admin.Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: cr.Name},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cr.Name},
				Subjects:   subject,
			}); err != nil {
				return nil, err
			}
		case "Role":
			var r rbacv1.Role
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u, &r); err != nil {
				return nil, err
			}
			if err := admin.Create(ctx, &r); err != nil {
				return nil, err
			}
			if err := admin.Create(ctx, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Namespace: r.Namespace, Name: r.Name},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: r.Name},
				Subjects:   subject,
			}); err != nil {
				return nil, err
			}
		}
	}
	cfg, err := env.AddUser(operatorUser)
	if err != nil {
		return nil, err
	}
	// The operator's defaults (main.go); client-go would allow only 5/s.
	cfg.QPS, cfg.Burst = 200, 400
	return cfg, nil
}

// testOptions are short intervals so the suite stays fast.
func testOptions() Options {
	return Options{
		Namespace:     operatorNS,
		WaitRequeue:   300 * time.Millisecond,
		FollowRequeue: 2 * time.Second,
		ConflictRetry: 50 * time.Millisecond,
		LabelGrace:    500 * time.Millisecond,
		Registerer:    prometheus.NewRegistry(),
	}
}

// operator is one running operator manager.
type operator struct {
	reg    *prometheus.Registry
	stop   func()
	client client.Client
}

// startOperator runs an operator manager as the RBAC-limited user until the
// test ends or stop is called.
func startOperator(t *testing.T, opts Options) *operator {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	mgr, err := ctrl.NewManager(operatorRC, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject:         map[client.Object]cache.ByObject{&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{opts.Namespace: {}}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := Setup(ctx, mgr, opts); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		cancel()
		t.Fatal("operator cache did not sync")
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("operator manager: %v", err)
		}
	}
	t.Cleanup(stop)
	return &operator{reg: reg, stop: stop, client: mgr.GetClient()}
}

// metric returns the value of a counter, or the sample count of a
// histogram, or the sum of a gauge's series whose labels contain want.
func (o *operator) metric(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	families, err := o.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.Metric {
			if !hasLabels(m, want) {
				continue
			}
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Histogram != nil:
				total += float64(m.Histogram.GetSampleCount())
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			}
		}
	}
	return total
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		found := false
		for _, l := range m.Label {
			if l.GetName() == k && l.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// world is one test's namespace and node pool. Its VMIs select the pool's
// label, so migrations never leave it, and its policies select only its
// namespace.
type world struct {
	t    *testing.T
	ns   string
	ctx  context.Context
	pool string
}

func newWorld(t *testing.T, nodes ...string) *world {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 40 {
		name = name[:40]
	}
	name = fmt.Sprintf("%s-%d", strings.Trim(name, "-"), runID.Add(1))
	w := &world{t: t, ns: name, ctx: context.Background(), pool: name}
	if err := admin.Create(w.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		w.addNode(n)
	}
	return w
}

func (w *world) node(short string) string { return w.pool + "-" + short }

func (w *world) addNode(short string) {
	w.t.Helper()
	if err := fakevirt.CreateNode(w.ctx, admin, fakevirt.NewNode(w.node(short), map[string]string{poolLabel: w.pool})); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) vmi(name, node string, labels map[string]string) *virtv1.VirtualMachineInstance {
	w.t.Helper()
	v := fakevirt.NewVMI(w.ns, name, w.node(node), labels)
	v.Spec.NodeSelector = map[string]string{poolLabel: w.pool}
	if err := fakevirt.CreateVMI(w.ctx, admin, v); err != nil {
		w.t.Fatal(err)
	}
	return v
}

func (w *world) key(name string) types.NamespacedName {
	return types.NamespacedName{Namespace: w.ns, Name: name}
}

// policy creates a policy that selects the world's namespace; mutate may
// change its spec.
func (w *world) policy(suffix string, mutate func(*v1alpha1.SideChannelPolicySpec)) *v1alpha1.SideChannelPolicy {
	w.t.Helper()
	p := &v1alpha1.SideChannelPolicy{ObjectMeta: metav1.ObjectMeta{Name: w.ns + "-" + suffix}}
	p.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: w.ns}}
	p.Spec.Response.Action = v1alpha1.ActionMigrate
	p.Spec.Response.MaxConcurrentMigrations = 10
	if mutate != nil {
		mutate(&p.Spec)
	}
	if err := admin.Create(w.ctx, p); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = admin.Delete(context.Background(), p) })
	return p
}

// finding creates what a node agent writes: victim on node, suspects given
// as names of VMIs in the world's namespace.
func (w *world) finding(name, victim, node string, suspects ...string) *v1alpha1.ThreatFinding {
	w.t.Helper()
	f := w.newFinding(name, victim, node, suspects...)
	if err := admin.Create(w.ctx, f); err != nil {
		w.t.Fatal(err)
	}
	return f
}

func (w *world) newFinding(name, victim, node string, suspects ...string) *v1alpha1.ThreatFinding {
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	f := &v1alpha1.ThreatFinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name, Labels: map[string]string{
			v1alpha1.LabelNode: w.node(node), v1alpha1.LabelVictim: victim, v1alpha1.LabelType: string(v1alpha1.CacheCovertChannel)}},
		Spec: v1alpha1.ThreatFindingSpec{
			Node: w.node(node), Type: v1alpha1.CacheCovertChannel, Detector: "cache-oscillation/v1",
			Severity: v1alpha1.SeverityHigh, Score: 0.86, Victim: v1alpha1.Victim{Name: victim},
			FirstSeen: now, LastSeen: now,
		},
	}
	for _, s := range suspects {
		f.Spec.Suspects = append(f.Spec.Suspects, v1alpha1.Suspect{Namespace: w.ns, Name: s, Score: 0.9, Role: "Receiver"})
	}
	return f
}

func (w *world) getFinding(name string) *v1alpha1.ThreatFinding {
	w.t.Helper()
	f := &v1alpha1.ThreatFinding{}
	if err := admin.Get(w.ctx, w.key(name), f); err != nil {
		w.t.Fatal(err)
	}
	return f
}

// waitPhase waits for the finding to reach phase and returns it.
func (w *world) waitPhase(name string, phase v1alpha1.FindingPhase, timeout time.Duration) *v1alpha1.ThreatFinding {
	w.t.Helper()
	f := &v1alpha1.ThreatFinding{}
	eventually(w.t, timeout, fmt.Sprintf("finding %s to be %s", name, phase), func() error {
		if err := admin.Get(w.ctx, w.key(name), f); err != nil {
			return err
		}
		if f.Status.Phase != phase {
			return fmt.Errorf("phase %q, message %q", f.Status.Phase, f.Status.Message)
		}
		return nil
	})
	return f
}

// waitReason waits for a condition of the finding to carry reason.
func (w *world) waitReason(name, condType, reason string, timeout time.Duration) *v1alpha1.ThreatFinding {
	w.t.Helper()
	f := &v1alpha1.ThreatFinding{}
	eventually(w.t, timeout, fmt.Sprintf("finding %s condition %s reason %s", name, condType, reason), func() error {
		if err := admin.Get(w.ctx, w.key(name), f); err != nil {
			return err
		}
		for _, c := range f.Status.Conditions {
			if c.Type == condType && c.Reason == reason {
				return nil
			}
		}
		return fmt.Errorf("phase %q, conditions %+v", f.Status.Phase, f.Status.Conditions)
	})
	return f
}

// migrationsOf lists every migration of a VMI in the world, by name.
func (w *world) migrationsOf(vmi string) []virtv1.VirtualMachineInstanceMigration {
	w.t.Helper()
	var list virtv1.VirtualMachineInstanceMigrationList
	if err := admin.List(w.ctx, &list, client.InNamespace(w.ns)); err != nil {
		w.t.Fatal(err)
	}
	var out []virtv1.VirtualMachineInstanceMigration
	for _, m := range list.Items {
		if m.Spec.VMIName == vmi {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (w *world) vmiNode(name string) string {
	w.t.Helper()
	v := &virtv1.VirtualMachineInstance{}
	if err := admin.Get(w.ctx, w.key(name), v); err != nil {
		w.t.Fatal(err)
	}
	return v.Status.NodeName
}

// eventReasons lists the reasons of the Events sidewatch recorded about an
// object, in order.
func (w *world) eventReasons(kind, name string) []string {
	w.t.Helper()
	var list eventsv1.EventList
	if err := admin.List(w.ctx, &list, client.InNamespace(w.ns)); err != nil {
		w.t.Fatal(err)
	}
	sort.Slice(list.Items, func(i, j int) bool {
		return list.Items[i].EventTime.Before(&list.Items[j].EventTime)
	})
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Kind == kind && e.Regarding.Name == name && e.ReportingController == "sidewatch-operator" {
			out = append(out, e.Reason)
		}
	}
	return out
}

// eventCount counts the occurrences of one Event reason about an object,
// including repeats the events API folds into a series.
func (w *world) eventCount(kind, name, reason string) int {
	w.t.Helper()
	var list eventsv1.EventList
	if err := admin.List(w.ctx, &list, client.InNamespace(w.ns)); err != nil {
		w.t.Fatal(err)
	}
	n := 0
	for _, e := range list.Items {
		if e.Regarding.Kind == kind && e.Regarding.Name == name && e.Reason == reason {
			if e.Series != nil {
				n += int(e.Series.Count)
			} else {
				n++
			}
		}
	}
	return n
}

// waitEvents waits until the object's Events include every reason in want.
func (w *world) waitEvents(kind, name string, want ...string) {
	w.t.Helper()
	eventually(w.t, 10*time.Second, fmt.Sprintf("%s %s events %v", kind, name, want), func() error {
		have := w.eventReasons(kind, name)
		for _, r := range want {
			if !contains(have, r) {
				return fmt.Errorf("have %v", have)
			}
		}
		return nil
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (w *world) vmiObject(name string) *virtv1.VirtualMachineInstance {
	return &virtv1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name}}
}

// deleteAllPolicies deletes every SideChannelPolicy in the cluster.
func deleteAllPolicies(t *testing.T) {
	t.Helper()
	if err := admin.DeleteAllOf(context.Background(), &v1alpha1.SideChannelPolicy{}); err != nil {
		t.Fatal(err)
	}
}
