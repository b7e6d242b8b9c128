package manifests_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/manifests"
)

// helm runs the chart tool built from go.mod's tool line.
func helm(t *testing.T, args ...string) []byte {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", append([]string{"tool", "helm"}, args...)...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %v: %v\n%s%s", args, err, out, stderr.String())
	}
	return out
}

func TestHelmLint(t *testing.T) {
	out := helm(t, "lint", "--strict", "charts/sidewatch", "--kube-version", "1.37.2")
	if !bytes.Contains(out, []byte("0 chart(s) failed")) {
		t.Errorf("helm lint: %s", out)
	}
}

func helmTemplate(t *testing.T, sets ...string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", "sidewatch", "charts/sidewatch", "--namespace", "sidewatch-system", "--kube-version", "1.37.2", "--include-crds"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	objs, err := manifests.Decode(helm(t, args...))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// TestHelmTemplateServerDryRun renders the chart with every optional part on
// and has the real API server validate each object (server-side dry run).
func TestHelmTemplateServerDryRun(t *testing.T) {
	ctx := context.Background()
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sidewatch-system"}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	objs := helmTemplate(t, "defaultPolicy.enabled=true")
	if len(objs) < 15 {
		t.Fatalf("helm template rendered %d objects, want the whole install", len(objs))
	}
	// CRDs are applied for real: the default policy's dry run needs them.
	if err := manifests.Apply(ctx, admin, objs, manifests.Options{DryRun: true, Skip: func(o *unstructured.Unstructured) bool {
		return o.GetKind() == "SideChannelPolicy"
	}}); err != nil {
		t.Fatal(err)
	}
	var policies []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "SideChannelPolicy" {
			policies = append(policies, o)
		}
	}
	if len(policies) != 1 {
		t.Fatalf("got %d default policies, want 1", len(policies))
	}
	if err := manifests.Apply(ctx, admin, policies, manifests.Options{DryRun: true}); err != nil {
		t.Fatal(err)
	}
}

// TestHelmMatchesKustomize keeps the two install paths granting the same
// permissions, installing the same CRDs and enforcing the same admission rules.
func TestHelmMatchesKustomize(t *testing.T) {
	chart := helmTemplate(t)
	kust := render(t)

	for _, name := range []string{"sidewatch-operator", "sidewatch-agent"} {
		a, b := find(chart, "ClusterRole", name), find(kust, "ClusterRole", name)
		if a == nil || b == nil {
			t.Fatalf("ClusterRole %s: chart %v, kustomize %v", name, a != nil, b != nil)
		}
		if ra, rb := rules(t, a), rules(t, b); !equality.Semantic.DeepEqual(ra, rb) {
			t.Errorf("ClusterRole %s differs:\n chart:     %+v\n kustomize: %+v", name, ra, rb)
		}
	}
	for _, kind := range []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		a, b := find(chart, kind, "sidewatch-agent-node-restriction"), find(kust, kind, "sidewatch-agent-node-restriction")
		if a == nil || b == nil {
			t.Fatalf("%s: chart %v, kustomize %v", kind, a != nil, b != nil)
		}
		sa, _, _ := unstructured.NestedMap(a.Object, "spec")
		sb, _, _ := unstructured.NestedMap(b.Object, "spec")
		if !equality.Semantic.DeepEqual(sa, sb) {
			t.Errorf("%s spec differs between chart and config/admission", kind)
		}
	}

	root, _ := controlplane.RepoRoot()
	bases, _ := filepath.Glob(filepath.Join(root, "config", "crd", "bases", "*.yaml"))
	for _, b := range bases {
		want, _ := os.ReadFile(b)
		got, err := os.ReadFile(filepath.Join(root, "charts", "sidewatch", "crds", filepath.Base(b)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("charts/sidewatch/crds/%s is not a copy of config/crd/bases (run make manifests)", filepath.Base(b))
		}
	}
}

func rules(t *testing.T, o *unstructured.Unstructured) []rbacv1.PolicyRule {
	t.Helper()
	var role rbacv1.ClusterRole
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &role); err != nil {
		t.Fatal(err)
	}
	return role.Rules
}
