// Package storetest checks evidence storage against a real API server, as
// the node agent uses it. It lives apart from package evidence so that the
// evidence fuzz targets do not start a control plane in every fuzz worker.
package storetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/internal/evidence/evidencetest"
	"github.com/sidewatch/sidewatch/internal/manifests"
)

var (
	env    *controlplane.Env
	admin  client.Client
	scheme = runtime.NewScheme()
)

// TestMain starts a real kube-apiserver and etcd once for the package (the
// other tests need none, but they are quick next to the start-up).
func TestMain(m *testing.M) {
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	var err error
	env, err = controlplane.Start(ctx, controlplane.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	admin, err = client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = env.Stop()
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

// installAgentPolicy applies config/ (RBAC and the agent's node-restriction
// admission policy), and returns a client of the agent of node worker-3
// once the policy refuses it a ConfigMap labelled for another node, so
// what follows runs under the policy.
func installAgentPolicy(t *testing.T) client.Client {
	t.Helper()
	ctx := context.Background()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifests.Build(filepath.Join(root, "config", "default"))
	if err != nil {
		t.Fatal(err)
	}
	if err := manifests.Apply(ctx, admin, objs, manifests.Options{}); err != nil {
		t.Fatal(err)
	}
	agent := agentClient(t, "worker-3")
	deadline := time.Now().Add(30 * time.Second)
	for {
		probe := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: "probe", Labels: map[string]string{v1alpha1.LabelNode: "elsewhere"}}}
		err := agent.Create(ctx, probe)
		if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
			return agent
		}
		if err == nil {
			_ = admin.Delete(ctx, probe)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the admission policy never refused a ConfigMap of another node; last error: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// agentClient authenticates as the sidewatch agent on node with a token
// bound to a pod on that node, as in a real cluster: the token carries the
// node name the admission policy checks.
func agentClient(t *testing.T, node string) client.Client {
	t.Helper()
	cfg, err := env.NodeAgentConfig(context.Background(), "sidewatch-system", "sidewatch-agent", node)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newFinding is a scenario's finding as the agent creates it: spec and
// labels only.
func newFinding(sc *evidencetest.Scenario) *v1alpha1.ThreatFinding {
	src := sc.Finding
	return &v1alpha1.ThreatFinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: src.Namespace, Name: src.Name, Labels: src.Labels},
		Spec:       src.Spec,
	}
}

// TestStoreAgainstAPIServer stores snapshots as the node agent would, with
// the agent's own credentials under the shipped RBAC and admission policy,
// reads them back, and checks the wiring that makes the API server's
// garbage collector delete a snapshot with its finding.
func TestStoreAgainstAPIServer(t *testing.T) {
	ctx := context.Background()
	for _, ns := range []string{"payments", "sidewatch-system"} {
		if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	agent := installAgentPolicy(t)

	sc := evidencetest.PrimeProbe(1)
	f := newFinding(sc)
	f.Spec.Severity = v1alpha1.SeverityHigh
	if err := agent.Create(ctx, f); err != nil {
		t.Fatalf("the agent could not create its finding: %v", err)
	}

	ref, err := evidence.Save(ctx, agent, f, sc.Snapshot)
	if err != nil {
		t.Fatalf("the agent could not save the snapshot: %v", err)
	}
	if ref.ConfigMapName != "payments-db-cachesidechannel-evidence" || ref.Bytes <= 0 || ref.Bytes > evidence.MaxCompressedBytes || ref.CapturedAt == nil {
		t.Errorf("reference %+v", ref)
	}

	var cm corev1.ConfigMap
	if err := admin.Get(ctx, client.ObjectKey{Namespace: "payments", Name: ref.ConfigMapName}, &cm); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{v1alpha1.LabelNode: "worker-3", v1alpha1.LabelFinding: f.Name, evidence.LabelComponent: evidence.ComponentValue} {
		if got := cm.Labels[k]; got != want {
			t.Errorf("label %s=%q, want %q", k, got, want)
		}
	}
	if got := int64(len(cm.BinaryData[evidence.DataKey])); got != ref.Bytes {
		t.Errorf("binaryData holds %d bytes, the reference says %d", got, ref.Bytes)
	}

	t.Run("owner reference", func(t *testing.T) {
		// envtest runs no kube-controller-manager, hence no garbage
		// collector: nothing deletes the ConfigMap here. What the collector
		// acts on is checked instead: a single owner reference naming the
		// finding by apiVersion, kind, name and uid, in the same namespace
		// (a namespaced dependent can only have owners in its namespace),
		// resolvable to the threatfindings resource by the API's discovery
		// (the collector resolves kinds the same way).
		if len(cm.OwnerReferences) != 1 {
			t.Fatalf("owner references %+v, want exactly the finding", cm.OwnerReferences)
		}
		o := cm.OwnerReferences[0]
		want := metav1.OwnerReference{APIVersion: "sidewatch.io/v1alpha1", Kind: "ThreatFinding", Name: f.Name, UID: f.UID, Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(false)}
		if !reflect.DeepEqual(o, want) {
			t.Errorf("owner reference %+v, want %+v", o, want)
		}
		if cm.Namespace != f.Namespace {
			t.Errorf("ConfigMap in %s, finding in %s", cm.Namespace, f.Namespace)
		}
		gv, err := schema.ParseGroupVersion(o.APIVersion)
		if err != nil {
			t.Fatal(err)
		}
		mapping, err := admin.RESTMapper().RESTMapping(schema.GroupKind{Group: gv.Group, Kind: o.Kind}, gv.Version)
		if err != nil {
			t.Fatalf("the API cannot resolve the owner's kind: %v", err)
		}
		if mapping.Resource.Resource != "threatfindings" || mapping.Scope.Name() != "namespace" {
			t.Errorf("owner resolves to %v (%s), want namespaced threatfindings", mapping.Resource, mapping.Scope.Name())
		}
		var owner v1alpha1.ThreatFinding
		if err := admin.Get(ctx, client.ObjectKey{Namespace: cm.Namespace, Name: o.Name}, &owner); err != nil || owner.UID != o.UID {
			t.Errorf("the owner reference does not name the live finding: %v (uid %s, want %s)", err, owner.UID, o.UID)
		}
	})

	t.Run("load", func(t *testing.T) {
		for name, c := range map[string]client.Client{"admin": admin, "agent": agent} {
			got, _, err := evidence.Load(ctx, c, f)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if got.Finding.UID != f.UID || got.Finding.Name != f.Name || len(got.Series) != len(sc.Snapshot.Series) {
				t.Errorf("%s: loaded snapshot of %s/%s (uid %s) with %d series", name, got.Finding.Namespace, got.Finding.Name, got.Finding.UID, len(got.Series))
			}
		}
	})

	t.Run("status contract", func(t *testing.T) {
		var stored v1alpha1.ThreatFinding
		if err := admin.Get(ctx, client.ObjectKeyFromObject(f), &stored); err != nil {
			t.Fatal(err)
		}
		got, err := evidence.RefFromAnnotation(&stored)
		if err != nil {
			t.Fatal(err)
		}
		if got == nil || got.ConfigMapName != ref.ConfigMapName || got.Bytes != ref.Bytes || !got.CapturedAt.Equal(ref.CapturedAt) {
			t.Errorf("annotation reference %+v, want %+v", got, ref)
		}
		// The operator copies it into status; the API accepts it there.
		stored.Status.Evidence = got
		if err := admin.Status().Update(ctx, &stored); err != nil {
			t.Fatalf("status.evidence refused: %v", err)
		}
	})

	t.Run("refresh when severity rises", func(t *testing.T) {
		var cur v1alpha1.ThreatFinding
		if err := agent.Get(ctx, client.ObjectKeyFromObject(f), &cur); err != nil {
			t.Fatal(err)
		}
		cur.Spec.Severity = v1alpha1.SeverityCritical
		if err := agent.Update(ctx, &cur); err != nil {
			t.Fatal(err)
		}
		later := evidencetest.PrimeProbe(2).Snapshot
		later.CapturedAt = later.CapturedAt.Add(30 * time.Second)
		ref2, err := evidence.Save(ctx, agent, &cur, later)
		if err != nil {
			t.Fatalf("refresh: %v", err)
		}
		var cm2 corev1.ConfigMap
		if err := admin.Get(ctx, client.ObjectKey{Namespace: "payments", Name: ref2.ConfigMapName}, &cm2); err != nil {
			t.Fatal(err)
		}
		if cm2.UID != cm.UID || cm2.ResourceVersion == cm.ResourceVersion {
			t.Errorf("the refresh did not update the same ConfigMap in place (uid %s→%s, rv %s→%s)", cm.UID, cm2.UID, cm.ResourceVersion, cm2.ResourceVersion)
		}
		got, _, err := evidence.Load(ctx, agent, &cur)
		if err != nil {
			t.Fatal(err)
		}
		if !got.CapturedAt.Equal(later.CapturedAt) || got.Finding.Severity != v1alpha1.SeverityCritical {
			t.Errorf("loaded snapshot captured at %s with severity %s, want %s and Critical", got.CapturedAt, got.Finding.Severity, later.CapturedAt)
		}
	})

	t.Run("snapshot far over the limit", func(t *testing.T) {
		big := newFinding(evidencetest.CovertChannel(1))
		if err := agent.Create(ctx, big); err != nil {
			t.Fatal(err)
		}
		ref, err := evidence.Save(ctx, agent, big, evidencetest.Huge(1).Snapshot)
		if err != nil {
			t.Fatalf("a snapshot over the limit was not stored: %v", err)
		}
		if !strings.Contains(ref.Trimmed, "samples: kept") {
			t.Errorf("reference trimmed %q, want the trimming notes", ref.Trimmed)
		}
		var cm corev1.ConfigMap
		if err := admin.Get(ctx, client.ObjectKey{Namespace: "payments", Name: ref.ConfigMapName}, &cm); err != nil {
			t.Fatal(err)
		}
		if cm.Annotations[evidence.AnnotationTrimmed] != ref.Trimmed {
			t.Errorf("ConfigMap annotation %s=%q, want %q", evidence.AnnotationTrimmed, cm.Annotations[evidence.AnnotationTrimmed], ref.Trimmed)
		}
		got, _, err := evidence.Load(ctx, admin, big)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Trimmed) == 0 {
			t.Error("the loaded snapshot has no trimming notes")
		}
	})

	t.Run("another node's agent", func(t *testing.T) {
		other := agentClient(t, "worker-9")
		_, err := evidence.Store(ctx, other, f, sc.Snapshot)
		if err == nil || !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) && !strings.Contains(err.Error(), "denied") {
			t.Errorf("the agent of worker-9 overwrote worker-3's evidence: %v", err)
		}
	})

	t.Run("a ConfigMap that is not evidence", func(t *testing.T) {
		g := newFinding(evidencetest.BusLock(1))
		if err := admin.Create(ctx, g); err != nil {
			t.Fatal(err)
		}
		squatter := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: evidence.ConfigMapName(g.Name)}, Data: map[string]string{"app.conf": "x"}}
		if err := admin.Create(ctx, squatter); err != nil {
			t.Fatal(err)
		}
		_, err := evidence.Store(ctx, admin, g, evidencetest.BusLock(1).Snapshot)
		if err == nil || !strings.Contains(err.Error(), "is not an evidence snapshot") {
			t.Errorf("got %v, want a refusal to overwrite a foreign ConfigMap", err)
		}
		if _, _, err := evidence.Load(ctx, admin, g); err == nil || !strings.Contains(err.Error(), "is not owned by this finding") {
			t.Errorf("Load of a foreign ConfigMap: %v", err)
		}
	})

	t.Run("deleted and re-created finding", func(t *testing.T) {
		// Deleting the finding leaves its snapshot with an owner that no
		// longer exists: with no other owner left, the garbage collector
		// deletes it. Until it does, a new finding of the same name must
		// not be shown the old evidence, and its own snapshot takes the
		// ConfigMap over.
		if err := admin.Delete(ctx, f); err != nil {
			t.Fatal(err)
		}
		var cmAfter corev1.ConfigMap
		if err := admin.Get(ctx, client.ObjectKey{Namespace: "payments", Name: ref.ConfigMapName}, &cmAfter); err != nil {
			t.Fatal(err)
		}
		for _, o := range cmAfter.OwnerReferences {
			var owner v1alpha1.ThreatFinding
			err := admin.Get(ctx, client.ObjectKey{Namespace: "payments", Name: o.Name}, &owner)
			if err == nil && owner.UID == o.UID {
				t.Errorf("owner %s (uid %s) still exists: the collector would keep the snapshot", o.Name, o.UID)
			}
		}
		again := newFinding(sc)
		if err := agent.Create(ctx, again); err != nil {
			t.Fatal(err)
		}
		if _, _, err := evidence.Load(ctx, admin, again); err == nil || !strings.Contains(err.Error(), "is not owned by this finding") {
			t.Errorf("the new finding was shown its predecessor's evidence: %v", err)
		}
		if _, err := evidence.Save(ctx, agent, again, sc.Snapshot); err != nil {
			t.Fatal(err)
		}
		got, cm, err := evidence.Load(ctx, admin, again)
		if err != nil {
			t.Fatal(err)
		}
		if got.Finding.UID != again.UID || len(cm.OwnerReferences) != 1 || cm.OwnerReferences[0].UID != again.UID {
			t.Errorf("snapshot of uid %s, owners %+v; want only the new finding %s", got.Finding.UID, cm.OwnerReferences, again.UID)
		}
	})
}

func TestNames(t *testing.T) {
	long := strings.Repeat("a", 120) + "." + strings.Repeat("b", 132) // 253 bytes
	for _, tc := range []struct {
		finding, configMap, label string
	}{
		{"payments-db-cachesidechannel", "payments-db-cachesidechannel-evidence", "payments-db-cachesidechannel"},
		{long, "", ""},
		{strings.Repeat("x", 63), strings.Repeat("x", 63) + "-evidence", strings.Repeat("x", 63)},
		{strings.Repeat("x", 64), strings.Repeat("x", 64) + "-evidence", ""},
	} {
		cm, label := evidence.ConfigMapName(tc.finding), evidence.FindingLabelValue(tc.finding)
		if errs := validation.IsDNS1123Subdomain(cm); len(errs) > 0 {
			t.Errorf("%.20s...: ConfigMap name %q: %v", tc.finding, cm, errs)
		}
		if errs := validation.IsValidLabelValue(label); len(errs) > 0 {
			t.Errorf("%.20s...: label value %q: %v", tc.finding, label, errs)
		}
		if tc.configMap != "" && cm != tc.configMap {
			t.Errorf("ConfigMapName(%q) = %q, want %q", tc.finding, cm, tc.configMap)
		}
		if tc.label != "" && label != tc.label {
			t.Errorf("FindingLabelValue(%q) = %q, want %q", tc.finding, label, tc.label)
		}
		if evidence.ConfigMapName(tc.finding) != cm || evidence.FindingLabelValue(tc.finding) != label {
			t.Error("names are not deterministic")
		}
	}
	// Long names that share a prefix still get different names.
	a, b := strings.Repeat("a", 250)+"x", strings.Repeat("a", 250)+"y"
	if evidence.ConfigMapName(a) == evidence.ConfigMapName(b) || evidence.FindingLabelValue(a) == evidence.FindingLabelValue(b) {
		t.Error("two long finding names map to the same evidence name")
	}
}

func TestRefFromAnnotation(t *testing.T) {
	f := &v1alpha1.ThreatFinding{ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: "x"}}
	for _, tc := range []struct {
		value string
		want  string // error substring, "" for success, "none" for no annotation
	}{
		{"", "none"},
		{`{"configMapName":"x-evidence","bytes":1000,"capturedAt":"2026-11-23T10:15:04Z"}`, ""},
		{`{"configMapName":"kube-root-ca.crt","bytes":1000,"capturedAt":"2026-11-23T10:15:04Z"}`, `configMapName is "kube-root-ca.crt", want "x-evidence"`},
		{`{"configMapName":"x-evidence","bytes":999999999,"capturedAt":"2026-11-23T10:15:04Z"}`, "bytes is 999999999"},
		{`{"configMapName":"x-evidence","bytes":10}`, "capturedAt is missing"},
		{`{"configMapName":"x-evidence","bytes":10,"capturedAt":"2026-11-23T10:15:04Z","extra":1}`, "unknown field"},
		{`not json`, "want an EvidenceSnapshotRef as JSON"},
	} {
		f.Annotations = map[string]string{}
		if tc.value != "" {
			f.Annotations[evidence.AnnotationRef] = tc.value
		}
		ref, err := evidence.RefFromAnnotation(f)
		switch tc.want {
		case "none":
			if ref != nil || err != nil {
				t.Errorf("no annotation: got %v, %v", ref, err)
			}
		case "":
			if err != nil || ref == nil {
				t.Errorf("%s: %v", tc.value, err)
			}
		default:
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: got %v, want an error containing %q", tc.value, err, tc.want)
			}
		}
	}
}
