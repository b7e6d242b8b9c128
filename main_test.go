package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	virtv1 "kubevirt.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/fakevirt"
)

// runAsManager makes the test binary run the operator's main instead of
// the tests, so the end-to-end test and the benchmark exercise the real
// flags and wiring in a process of its own (whose memory can be measured).
const runAsManager = "SIDEWATCH_TEST_RUN_MANAGER"

const operatorUser = "sidewatch-operator"

var (
	env   *controlplane.Env
	admin client.Client
)

func TestMain(m *testing.M) {
	if os.Getenv(runAsManager) == "1" {
		main()
		return
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	// Only start a control plane when a test or benchmark of this package
	// will run (go vet and -list do not need one).
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	var err error
	env, err = controlplane.Start(ctx, controlplane.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if admin, err = client.New(env.Config, client.Options{Scheme: newScheme()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// kubeconfigFor writes a kubeconfig for a user bound to the operator's
// RBAC (config/rbac/role.yaml and leader_election_role.yaml) and returns
// its path.
func kubeconfigFor(t testing.TB, dir string) string {
	t.Helper()
	ctx := context.Background()
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sidewatch-system"}}); client.IgnoreAlreadyExists(err) != nil {
		t.Fatal(err)
	}
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	for _, name := range []string{"role.yaml", "leader_election_role.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, "config", "rbac", name))
		if err != nil {
			t.Fatal(err)
		}
		raw = append(append(raw, b...), []byte("\n---\n")...)
	}
	subject := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: operatorUser}}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		var u map[string]any
		if err := dec.Decode(&u); err != nil {
			break
		}
		var objs []client.Object
		switch u["kind"] {
		case "ClusterRole":
			var cr rbacv1.ClusterRole
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u, &cr); err != nil {
				t.Fatal(err)
			}
			objs = []client.Object{&cr, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: cr.Name},
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: cr.Name}, Subjects: subject}}
		case "Role":
			var r rbacv1.Role
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u, &r); err != nil {
				t.Fatal(err)
			}
			objs = []client.Object{&r, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: r.Namespace, Name: r.Name},
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: r.Name}, Subjects: subject}}
		}
		for _, o := range objs {
			if err := admin.Create(ctx, o); client.IgnoreAlreadyExists(err) != nil {
				t.Fatal(err)
			}
		}
	}
	cfg, err := env.AddUser(operatorUser)
	if err != nil {
		t.Fatal(err)
	}
	return writeKubeconfig(t, cfg, filepath.Join(dir, "operator.kubeconfig"))
}

func writeKubeconfig(t testing.TB, cfg *rest.Config, path string) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["operator"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "operator"}
	kc.CurrentContext = "envtest"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// manager is the operator running in its own process.
type manager struct {
	cmd     *exec.Cmd
	metrics string
	probes  string
	logs    *bytes.Buffer
	mu      *sync.Mutex
}

func startManager(t testing.TB, kubeconfig string, extra ...string) *manager {
	t.Helper()
	m := &manager{metrics: freePort(t), probes: freePort(t), logs: &bytes.Buffer{}, mu: &sync.Mutex{}}
	args := append([]string{
		"--kubeconfig", kubeconfig,
		"--metrics-bind-address", m.metrics,
		"--health-probe-bind-address", m.probes,
		"--namespace", "sidewatch-system",
	}, extra...)
	m.cmd = exec.Command(os.Args[0], args...)
	m.cmd.Env = append(os.Environ(), runAsManager+"=1")
	pr, pw := io.Pipe()
	m.cmd.Stdout, m.cmd.Stderr = pw, pw
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			m.mu.Lock()
			m.logs.WriteString(sc.Text() + "\n")
			m.mu.Unlock()
		}
	}()
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- m.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = m.cmd.Process.Kill()
			<-done
		}
		_ = pw.Close()
		if t.Failed() {
			t.Logf("manager logs:\n%s", m.log())
		}
	})
	eventually(t, 30*time.Second, "manager /healthz", func() error {
		resp, err := http.Get("http://" + m.probes + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	return m
}

func (m *manager) log() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.logs.String()
}

func (m *manager) scrape(t testing.TB) string {
	t.Helper()
	resp, err := http.Get("http://" + m.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// memory returns the manager process's peak and current resident set, in
// bytes, from /proc.
func (m *manager) memory(t testing.TB) (peak, current int64) {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmHWM:":
			peak = kb * 1024
		case "VmRSS:":
			current = kb * 1024
		}
	}
	return peak, current
}

func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startFakevirt runs KubeVirt's stand-in as a cluster administrator.
func startFakevirt(t testing.TB) {
	t.Helper()
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: newScheme(), Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	fv := fakevirt.New(mgr.GetClient(), fakevirt.Options{StepDelay: 50 * time.Millisecond})
	if err := fv.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestManagerEndToEnd runs the operator binary's main as a separate
// process, as the least-privileged user config/rbac grants, with leader
// election on, and checks that it migrates a victim and serves its
// metrics and probes.
func TestManagerEndToEnd(t *testing.T) {
	ctx := context.Background()
	startFakevirt(t)
	kubeconfig := kubeconfigFor(t, t.TempDir())
	mgr := startManager(t, kubeconfig, "--leader-elect=true", "--finding-ttl=1h")

	ns := "e2e"
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"e2e-a", "e2e-b"} {
		if err := fakevirt.CreateNode(ctx, admin, fakevirt.NewNode(n, map[string]string{"pool": "e2e"})); err != nil {
			t.Fatal(err)
		}
	}
	vmi := fakevirt.NewVMI(ns, "vm", "e2e-a", nil)
	vmi.Spec.NodeSelector = map[string]string{"pool": "e2e"}
	if err := fakevirt.CreateVMI(ctx, admin, vmi); err != nil {
		t.Fatal(err)
	}
	policy := &v1alpha1.SideChannelPolicy{ObjectMeta: metav1.ObjectMeta{Name: "e2e"}}
	policy.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}}
	policy.Spec.Response.Action = v1alpha1.ActionMigrate
	if err := admin.Create(ctx, policy); err != nil {
		t.Fatal(err)
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	f := &v1alpha1.ThreatFinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "f"},
		Spec: v1alpha1.ThreatFindingSpec{Node: "e2e-a", Type: v1alpha1.BusLockCovertChannel, Severity: v1alpha1.SeverityCritical,
			Score: 0.95, Victim: v1alpha1.Victim{Name: "vm"}, FirstSeen: now, LastSeen: now}}
	if err := admin.Create(ctx, f); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the finding to be Mitigated", func() error {
		if err := admin.Get(ctx, client.ObjectKeyFromObject(f), f); err != nil {
			return err
		}
		if f.Status.Phase != v1alpha1.PhaseMitigated {
			return fmt.Errorf("phase %q: %s", f.Status.Phase, f.Status.Message)
		}
		return nil
	})
	if err := admin.Get(ctx, client.ObjectKeyFromObject(vmi), vmi); err != nil {
		t.Fatal(err)
	}
	if vmi.Status.NodeName != "e2e-b" {
		t.Errorf("VMI on %s, want e2e-b", vmi.Status.NodeName)
	}

	metrics := mgr.scrape(t)
	for _, want := range []string{
		"sidewatch_migrations_started_total 1",
		"sidewatch_migrations_succeeded_total 1",
		"sidewatch_migrations_failed_total 0",
		"sidewatch_migration_duration_seconds_count 1",
		"sidewatch_finding_to_migration_seconds_count 1",
		`sidewatch_findings{phase="Mitigated",severity="Critical",type="BusLockCovertChannel"} 1`,
		"sidewatch_migrations_in_flight 0",
		// controller-runtime's own metrics are served alongside.
		`controller_runtime_reconcile_total{controller="threatfinding"`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Leader election ran in the operator's namespace with the granted RBAC.
	var leases = &metav1.PartialObjectMetadataList{}
	leases.SetGroupVersionKind(schemaLeaseList)
	if err := admin.List(ctx, leases, client.InNamespace("sidewatch-system")); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range leases.Items {
		found = found || l.Name == "sidewatch-operator.sidewatch.io"
	}
	if !found {
		t.Errorf("no leader-election Lease in sidewatch-system")
	}
	if strings.Contains(mgr.log(), "forbidden") {
		t.Errorf("the manager was refused something by RBAC:\n%s", grep(mgr.log(), "forbidden"))
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// BenchmarkFindingToMigration: 1,000 VMIs on 50 nodes, 100 findings
// created at once; reports the latency from each finding's creation to
// the creation of its migration (as a watch sees it) and the manager
// process's memory. Run it with:
//
//	go test -run '^$' -bench FindingToMigration -benchtime 1x .
func BenchmarkFindingToMigration(b *testing.B) {
	ctx := context.Background()
	kubeconfig := kubeconfigFor(b, b.TempDir())
	const (
		nodes    = 50
		vmis     = 1000
		findings = 100
		affected = 10 // the nodes where attacks happen
	)
	for i := range nodes {
		if err := fakevirt.CreateNode(ctx, admin, fakevirt.NewNode(fmt.Sprintf("bench-n%02d", i), nil)); client.IgnoreAlreadyExists(err) != nil {
			b.Fatal(err)
		}
	}
	pprof := freePort(b)
	args := []string{"--leader-elect=false", "--pprof-bind-address=" + pprof}
	// SIDEWATCH_BENCH_ARGS adds manager flags, e.g. --finding-workers=32.
	args = append(args, strings.Fields(os.Getenv("SIDEWATCH_BENCH_ARGS"))...)
	mgr := startManager(b, kubeconfig, args...)

	var lat, calls []time.Duration
	createdAt, latOf := make([]time.Time, findings), make([]time.Duration, findings)
	for iter := 0; iter < b.N; iter++ {
		b.StopTimer()
		ns := fmt.Sprintf("bench-%d", iter)
		if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			b.Fatal(err)
		}
		// Victims and their attackers on the affected nodes, the rest of
		// the VMIs everywhere.
		createVMIs(b, ns, vmis, nodes, findings, affected)
		policy := &v1alpha1.SideChannelPolicy{ObjectMeta: metav1.ObjectMeta{Name: ns}}
		policy.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}}
		policy.Spec.Response.Action = v1alpha1.ActionMigrate
		policy.Spec.Response.MaxConcurrentMigrations = 100
		if err := admin.Create(ctx, policy); err != nil {
			b.Fatal(err)
		}
		// The manager has seen every VMI once its policy status counts them.
		eventually(b, 2*time.Minute, "the policy to count the VMIs", func() error {
			p := &v1alpha1.SideChannelPolicy{}
			if err := admin.Get(ctx, client.ObjectKeyFromObject(policy), p); err != nil {
				return err
			}
			if p.Status.SelectedVMIs != vmis {
				return fmt.Errorf("selected %d", p.Status.SelectedVMIs)
			}
			return nil
		})

		// Let the burst of VMI creations settle: the benchmark measures the
		// operator in a steady cluster, not the API server's backlog.
		time.Sleep(3 * time.Second)
		seen := watchMigrations(b, ns, findings)
		created := make([]time.Time, findings)
		createCall := make([]time.Duration, findings)
		var wg sync.WaitGroup
		profDone := make(chan struct{})
		if out := os.Getenv("SIDEWATCH_BENCH_CPUPROFILE"); out != "" {
			go func() {
				defer close(profDone)
				resp, err := http.Get("http://" + pprof + "/debug/pprof/profile?seconds=4")
				if err != nil {
					b.Error(err)
					return
				}
				defer resp.Body.Close()
				data, _ := io.ReadAll(resp.Body)
				_ = os.WriteFile(out, data, 0o644)
			}()
			time.Sleep(100 * time.Millisecond)
		} else {
			close(profDone)
		}
		b.StartTimer()
		for w := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < findings; i += 20 {
					now := metav1.NewTime(time.Now().Truncate(time.Second))
					node := fmt.Sprintf("bench-n%02d", i%affected)
					f := &v1alpha1.ThreatFinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("f-%03d", i)},
						Spec: v1alpha1.ThreatFindingSpec{Node: node, Type: v1alpha1.CacheSideChannel, Severity: v1alpha1.SeverityHigh,
							Score: 0.9, Victim: v1alpha1.Victim{Name: fmt.Sprintf("victim-%03d", i)},
							Suspects:  []v1alpha1.Suspect{{Namespace: ns, Name: fmt.Sprintf("spy-%03d", i), Score: 0.9, Role: "Attacker"}},
							FirstSeen: now, LastSeen: now}}
					sent := time.Now()
					if err := admin.Create(ctx, f); err != nil {
						b.Error(err)
					}
					created[i] = time.Now()
					createCall[i] = created[i].Sub(sent)
				}
			}()
		}
		wg.Wait()
		got := seen.wait(b, 2*time.Minute)
		b.StopTimer()
		<-profDone
		for i := range findings {
			lat = append(lat, got[fmt.Sprintf("f-%03d", i)].Sub(created[i]))
			calls = append(calls, createCall[i])
			createdAt[i], latOf[i] = created[i], lat[len(lat)-1]
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sort.Slice(calls, func(i, j int) bool { return calls[i] < calls[j] })
	b.Logf("the API server took p50 %s, p95 %s, max %s to accept a finding", calls[len(calls)/2], calls[len(calls)*95/100], calls[len(calls)-1])
	pct := func(p float64) time.Duration { return lat[int(float64(len(lat)-1)*p)] }
	peak, cur := mgr.memory(b)
	b.ReportMetric(float64(pct(0.5).Milliseconds()), "p50-ms")
	b.ReportMetric(float64(pct(0.95).Milliseconds()), "p95-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max-ms")
	b.ReportMetric(float64(peak)/(1<<20), "peak-rss-MiB")
	b.ReportMetric(float64(cur)/(1<<20), "rss-MiB")
	load, _ := os.ReadFile("/proc/loadavg")
	b.Logf("%d findings: finding -> migration p50 %s, p95 %s, max %s; manager RSS peak %.1f MiB, now %.1f MiB; load average %s",
		len(lat), pct(0.5), pct(0.95), lat[len(lat)-1], float64(peak)/(1<<20), float64(cur)/(1<<20), strings.TrimSpace(string(load)))
	if path := os.Getenv("SIDEWATCH_BENCH_LOG"); path != "" {
		var lines []string
		for i := range findings {
			lines = append(lines, fmt.Sprintf("f-%03d created %s latency %s", i, createdAt[i].Format("15:04:05.000000"), latOf[i]))
		}
		_ = os.WriteFile(path, []byte(mgr.log()+"\n"+strings.Join(lines, "\n")+"\n"), 0o644)
	}
	if pct(0.95) >= time.Second {
		b.Errorf("p95 %s, want under 1s", pct(0.95))
	}
	if peak >= 150<<20 {
		b.Errorf("manager peak RSS %.1f MiB, want under 150 MiB", float64(peak)/(1<<20))
	}
}

// createVMIs makes total VMIs in ns: victim-i and spy-i (i < pairs) on the
// first affected nodes, the rest spread over all nodes.
func createVMIs(b *testing.B, ns string, total, nodes, pairs, affected int) {
	b.Helper()
	ctx := context.Background()
	var names []struct{ name, node string }
	for i := range pairs {
		node := fmt.Sprintf("bench-n%02d", i%affected)
		names = append(names, struct{ name, node string }{fmt.Sprintf("victim-%03d", i), node},
			struct{ name, node string }{fmt.Sprintf("spy-%03d", i), node})
	}
	for i := len(names); i < total; i++ {
		names = append(names, struct{ name, node string }{fmt.Sprintf("tenant-%04d", i), fmt.Sprintf("bench-n%02d", i%nodes)})
	}
	var wg sync.WaitGroup
	work := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				v := fakevirt.NewVMI(ns, names[i].name, names[i].node, map[string]string{"app": "bench"})
				if err := fakevirt.CreateVMI(ctx, admin, v); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := range names {
		work <- i
	}
	close(work)
	wg.Wait()
}

// migrationWatch records when a watch first sees each finding's migration.
type migrationWatch struct {
	mu   sync.Mutex
	seen map[string]time.Time
	want int
	done chan struct{}
}

func watchMigrations(b *testing.B, ns string, want int) *migrationWatch {
	b.Helper()
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: newScheme()})
	if err != nil {
		b.Fatal(err)
	}
	w, err := wc.Watch(context.Background(), &virtv1.VirtualMachineInstanceMigrationList{}, client.InNamespace(ns))
	if err != nil {
		b.Fatal(err)
	}
	mw := &migrationWatch{seen: map[string]time.Time{}, want: want, done: make(chan struct{})}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			if ev.Type != watch.Added {
				continue
			}
			at := time.Now()
			m, ok := ev.Object.(*virtv1.VirtualMachineInstanceMigration)
			if !ok {
				continue
			}
			f := m.Labels[v1alpha1.LabelFinding]
			mw.mu.Lock()
			if _, dup := mw.seen[f]; !dup {
				mw.seen[f] = at
			}
			n := len(mw.seen)
			mw.mu.Unlock()
			if n == want {
				close(mw.done)
				return
			}
		}
	}()
	return mw
}

func (mw *migrationWatch) wait(b *testing.B, timeout time.Duration) map[string]time.Time {
	b.Helper()
	select {
	case <-mw.done:
	case <-time.After(timeout):
		mw.mu.Lock()
		n := len(mw.seen)
		mw.mu.Unlock()
		b.Fatalf("saw %d of %d migrations within %s", n, mw.want, timeout)
	}
	mw.mu.Lock()
	defer mw.mu.Unlock()
	return mw.seen
}

var schemaLeaseList = coordinationv1.SchemeGroupVersion.WithKind("LeaseList")
