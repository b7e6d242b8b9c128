package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
)

var (
	env *controlplane.Env
	k8s client.Client
)

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	var err error
	env, err = controlplane.Start(ctx, controlplane.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = apiextv1.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	k8s, err = client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = env.Stop()
		os.Exit(1)
	}
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop control plane:", err)
	}
	os.Exit(code)
}

func sample(t *testing.T, name string) *unstructured.Unstructured {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "config", "samples", name))
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(raw, &u.Object); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return u
}

func namespace(t *testing.T, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Create(context.Background(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func TestCRDsInstalled(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		crd     string
		short   string
		columns []string
	}{
		{"sidechannelpolicies.sidewatch.io", "scp", []string{"Action", "Selected", "Ready", "Age"}},
		{"threatfindings.sidewatch.io", "tf", []string{"Victim", "Node", "Type", "Severity", "Phase", "Age"}},
		{"virtualmachineinstances.kubevirt.io", "vmi", []string{"Phase", "NodeName"}},
		{"virtualmachineinstancemigrations.kubevirt.io", "vmim", []string{"Phase", "VMI"}},
	} {
		t.Run(tc.crd, func(t *testing.T) {
			var crd apiextv1.CustomResourceDefinition
			if err := k8s.Get(ctx, client.ObjectKey{Name: tc.crd}, &crd); err != nil {
				t.Fatal(err)
			}
			established := false
			for _, c := range crd.Status.Conditions {
				if c.Type == apiextv1.Established && c.Status == apiextv1.ConditionTrue {
					established = true
				}
			}
			if !established {
				t.Errorf("CRD %s is not Established", tc.crd)
			}
			if !contains(crd.Spec.Names.ShortNames, tc.short) {
				t.Errorf("short names %v lack %q", crd.Spec.Names.ShortNames, tc.short)
			}
			var have []string
			for _, c := range crd.Spec.Versions[0].AdditionalPrinterColumns {
				have = append(have, c.Name)
			}
			for _, want := range tc.columns {
				if !contains(have, want) {
					t.Errorf("printer columns %v lack %q", have, want)
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestSamplesAccepted(t *testing.T) {
	ctx := context.Background()
	namespace(t, "payments")
	for _, name := range []string{"sidewatch_v1alpha1_sidechannelpolicy.yaml", "sidewatch_v1alpha1_threatfinding.yaml"} {
		t.Run(name, func(t *testing.T) {
			u := sample(t, name)
			if err := k8s.Create(ctx, u); err != nil {
				t.Fatalf("create %s: %v", name, err)
			}
			t.Cleanup(func() { _ = k8s.Delete(ctx, u) })
		})
	}
}

func TestPolicyDefaults(t *testing.T) {
	ctx := context.Background()
	p := &v1alpha1.SideChannelPolicy{ObjectMeta: metav1.ObjectMeta{Name: "defaults"}}
	// A Go client sends no zero-valued optional fields, so the API server's
	// schema defaults fill the whole spec.
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, p) })
	got := &v1alpha1.SideChannelPolicy{}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(p), got); err != nil {
		t.Fatal(err)
	}
	s := got.Spec
	for _, c := range []struct {
		field     string
		got, want any
	}{
		{"collection.interval", s.Collection.Interval.Duration, 100 * time.Millisecond},
		{"collection.samplePeriod", s.Collection.SamplePeriod, int64(10000)},
		{"len(collection.events)", len(s.Collection.Events), 7},
		{"len(collection.sampledEvents)", len(s.Collection.SampledEvents), 2},
		{"detectors.cacheOscillation.enabled", s.Detectors.CacheOscillation.Enabled != nil && *s.Detectors.CacheOscillation.Enabled, true},
		{"detectors.cacheOscillation.window", s.Detectors.CacheOscillation.Window.Duration, 10 * time.Second},
		{"detectors.cacheOscillation.minAutocorrelation", s.Detectors.CacheOscillation.MinAutocorrelation, 0.5},
		{"detectors.cacheOscillation.minRepetitions", s.Detectors.CacheOscillation.MinRepetitions, int32(6)},
		{"detectors.busLock.minBurstRate", s.Detectors.BusLock.MinBurstRate, int64(500)},
		{"detectors.busLock.minBursts", s.Detectors.BusLock.MinBursts, int32(5)},
		{"detectors.cryptoCorrelation.baselineWindow", s.Detectors.CryptoCorrelation.BaselineWindow.Duration, 5 * time.Minute},
		{"detectors.cryptoCorrelation.anomalyThreshold", s.Detectors.CryptoCorrelation.AnomalyThreshold, 4.0},
		{"response.action", s.Response.Action, v1alpha1.ActionAlert},
		{"response.minSeverity", s.Response.MinSeverity, v1alpha1.SeverityHigh},
		{"response.cooldown", s.Response.Cooldown.Duration, 30 * time.Minute},
		{"response.maxConcurrentMigrations", s.Response.MaxConcurrentMigrations, int32(2)},
		{"response.maxMigrationAttempts", s.Response.MaxMigrationAttempts, int32(3)},
		{"response.retryBackoff", s.Response.RetryBackoff.Duration, 30 * time.Second},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
		}
	}

	// The Go defaulting used for policies read from files must agree.
	var fromGo v1alpha1.SideChannelPolicySpec
	fromGo.Default()
	if !equality.Semantic.DeepEqual(fromGo, got.Spec) {
		t.Errorf("Go defaults differ from the schema's:\n go:     %+v\n schema: %+v", fromGo, got.Spec)
	}
}

func TestFindingDefaults(t *testing.T) {
	ctx := context.Background()
	namespace(t, "defaults")
	f := validFinding("defaults", "minimal")
	if err := k8s.Create(ctx, f); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, f) })
	if f.Spec.Detections != 1 {
		t.Errorf("spec.detections = %d, want default 1", f.Spec.Detections)
	}
}

func validFinding(ns, name string) *v1alpha1.ThreatFinding {
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	return &v1alpha1.ThreatFinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.ThreatFindingSpec{
			Node: "n1", Type: v1alpha1.CacheCovertChannel, Severity: v1alpha1.SeverityHigh, Score: 0.8,
			Victim:    v1alpha1.Victim{Name: "vm-a"},
			Suspects:  []v1alpha1.Suspect{{Namespace: "other", Name: "vm-b", Score: 0.9}},
			FirstSeen: now, LastSeen: now,
		},
	}
}

// TestInvalidRejected sends objects the API must refuse and checks that the
// refusal names the offending field, so a user knows what to fix.
func TestInvalidRejected(t *testing.T) {
	ctx := context.Background()
	namespace(t, "invalid")
	policy := func(spec string) string {
		return "apiVersion: sidewatch.io/v1alpha1\nkind: SideChannelPolicy\nmetadata:\n  name: bad\nspec:\n" + spec
	}
	finding := func(spec string) string {
		base := "  node: n1\n  type: CacheCovertChannel\n  severity: High\n  score: 0.5\n  victim: {name: vm-a}\n  firstSeen: \"2026-11-23T10:00:00Z\"\n  lastSeen: \"2026-11-23T10:00:10Z\"\n"
		return "apiVersion: sidewatch.io/v1alpha1\nkind: ThreatFinding\nmetadata:\n  name: bad\n  namespace: invalid\nspec:\n" + mergeYAML(base, spec)
	}
	for _, tc := range []struct {
		name string
		obj  string
		want []string // substrings of the error, naming the field
	}{
		{"unknown action", policy("  response: {action: Reboot}"), []string{"spec.response.action", "Unsupported value"}},
		{"interval too short", policy("  collection: {interval: 1ms}"), []string{"spec.collection.interval", "between 10ms and 10s"}},
		{"interval not a duration", policy("  collection: {interval: fast}"), []string{"spec.collection.interval"}},
		{"window shorter than 10 intervals", policy("  collection: {interval: 1s}\n  detectors: {cacheOscillation: {window: 5s}}"), []string{"spec.detectors.cacheOscillation.window", "10 times collection.interval"}},
		{"sample period too small", policy("  collection: {samplePeriod: 10}"), []string{"spec.collection.samplePeriod", "greater than or equal to 100"}},
		{"sampled event not counted", policy("  collection: {events: [llc_misses], sampledEvents: [bus_locks]}"), []string{"spec.collection.sampledEvents", "only name events that collection.events counts"}},
		{"unknown event", policy("  collection: {events: [tlb_misses]}"), []string{"spec.collection.events[0]", "Unsupported value"}},
		{"autocorrelation above 1", policy("  detectors: {cacheOscillation: {minAutocorrelation: 1.5}}"), []string{"spec.detectors.cacheOscillation.minAutocorrelation"}},
		{"min period not below max", policy("  detectors: {cacheOscillation: {minPeriod: 5s, maxPeriod: 1s}}"), []string{"spec.detectors.cacheOscillation.minPeriod", "shorter than maxPeriod"}},
		{"baseline shorter than window", policy("  detectors: {cryptoCorrelation: {window: 1m, baselineWindow: 30s}}"), []string{"spec.detectors.cryptoCorrelation.baselineWindow"}},
		{"signature without matcher", policy("  detectors: {cryptoCorrelation: {signatures: [{name: empty}]}}"), []string{"spec.detectors.cryptoCorrelation.signatures[0]", "libraries, symbols or profileConfigMap"}},
		{"zero attempts", policy("  response: {maxMigrationAttempts: 0}"), []string{"spec.response.maxMigrationAttempts"}},
		{"migrate with no concurrency", policy("  response: {action: Migrate, maxConcurrentMigrations: 0}"), []string{"spec.response.maxConcurrentMigrations", "at least 1"}},
		{"unknown severity", policy("  response: {minSeverity: Urgent}"), []string{"spec.response.minSeverity", "Unsupported value"}},
		{"priority out of range", policy("  priority: 5000"), []string{"spec.priority"}},
		{"finding unknown type", finding("  type: Rowhammer"), []string{"spec.type", "Unsupported value"}},
		{"finding score above 1", finding("  score: 2"), []string{"spec.score"}},
		{"finding without node", finding("  node: \"\""), []string{"spec.node"}},
		{"finding last before first", finding("  lastSeen: \"2026-11-23T09:00:00Z\""), []string{"spec.lastSeen", "must not be before spec.firstSeen"}},
		{"side channel without suspects", finding("  type: CacheSideChannel"), []string{"spec.suspects", "at least one suspect"}},
		{"victim among suspects", finding("  victim: {name: vm-a, uid: u-1}\n  suspects: [{namespace: other, name: vm-b, uid: u-1, score: 0.5}]"), []string{"spec.suspects", "must not name the victim"}},
		{"bad guest offset", finding("  victim: {name: vm-a, guest: [{offset: \"1234\"}]}"), []string{"spec.victim.guest[0].offset"}},
		{"missing victim name", finding("  victim: {uid: abc}"), []string{"spec.victim.name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(tc.obj), &u.Object); err != nil {
				t.Fatalf("test YAML: %v", err)
			}
			err := k8s.Create(ctx, u)
			if err == nil {
				_ = k8s.Delete(ctx, u)
				t.Fatalf("created, want rejection naming %v", tc.want)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("got %v, want an Invalid error", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// mergeYAML overrides top-level keys of base (two-space indented YAML) with
// those in over.
func mergeYAML(base, over string) string {
	key := func(line string) string { return strings.SplitN(strings.TrimSpace(line), ":", 2)[0] }
	overridden := map[string]bool{}
	for _, l := range strings.Split(strings.TrimRight(over, "\n"), "\n") {
		overridden[key(l)] = true
	}
	var out []string
	for _, l := range strings.Split(strings.TrimRight(base, "\n"), "\n") {
		if !overridden[key(l)] {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n") + "\n" + over + "\n"
}

func TestFindingImmutableNode(t *testing.T) {
	ctx := context.Background()
	namespace(t, "immutable")
	f := validFinding("immutable", "f1")
	if err := k8s.Create(ctx, f); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, f) })
	f.Spec.Node = "n2"
	err := k8s.Update(ctx, f)
	if err == nil || !strings.Contains(err.Error(), "spec.node is immutable") {
		t.Fatalf("got %v, want spec.node is immutable", err)
	}
}

// TestExplain checks that the field documentation reaches kubectl explain.
func TestExplain(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.Kubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{"threatfinding.spec", "node is the node whose agent saw the attack"},
		{"threatfinding.spec.suspects", "co-located VMIs the evidence points at"},
		{"sidechannelpolicy.spec.response.cooldown", "ping-pongs"},
	} {
		out, err := exec.Command(env.Kubectl(), "--kubeconfig", kubeconfig, "explain", tc.path).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl explain %s: %v\n%s", tc.path, err, out)
		}
		if !strings.Contains(strings.Join(strings.Fields(string(out)), " "), tc.want) {
			t.Errorf("kubectl explain %s lacks %q:\n%s", tc.path, tc.want, out)
		}
	}
}
