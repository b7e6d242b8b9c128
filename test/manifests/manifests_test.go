// Package manifests_test checks the kustomize tree under config/ against a
// real API server: it renders, applies, grants no wildcards, and its
// admission policy keeps each node agent to its own node.
package manifests_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/manifests"
)

var (
	env    *controlplane.Env
	admin  client.Client
	scheme = runtime.NewScheme()
)

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

func render(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifests.Build(filepath.Join(root, "config", "default"))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

func TestRenderedObjects(t *testing.T) {
	objs := render(t)
	for _, want := range []struct{ kind, name string }{
		{"CustomResourceDefinition", "sidechannelpolicies.sidewatch.io"},
		{"CustomResourceDefinition", "threatfindings.sidewatch.io"},
		{"Namespace", "sidewatch-system"},
		{"Deployment", "sidewatch-operator"},
		{"DaemonSet", "sidewatch-agent"},
		{"ClusterRole", "sidewatch-operator"},
		{"ClusterRole", "sidewatch-agent"},
		{"ValidatingAdmissionPolicy", "sidewatch-agent-node-restriction"},
		{"ValidatingAdmissionPolicyBinding", "sidewatch-agent-node-restriction"},
	} {
		if find(objs, want.kind, want.name) == nil {
			t.Errorf("config/default lacks %s %s", want.kind, want.name)
		}
	}

	ds := find(objs, "DaemonSet", "sidewatch-agent")
	if ds == nil {
		t.Fatal("no agent DaemonSet")
	}
	if hostPID, _, _ := unstructured.NestedBool(ds.Object, "spec", "template", "spec", "hostPID"); !hostPID {
		t.Error("agent DaemonSet must run with hostPID to see QEMU's threads")
	}
	containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	sc, _, _ := unstructured.NestedMap(containers[0].(map[string]any), "securityContext")
	if p, _ := sc["privileged"].(bool); p {
		t.Error("agent must not run privileged")
	}
	add, _, _ := unstructured.NestedStringSlice(sc, "capabilities", "add")
	for _, c := range []string{"PERFMON", "BPF", "SYS_PTRACE", "SYS_RESOURCE"} {
		if !contains(add, c) {
			t.Errorf("agent capabilities %v lack %s", add, c)
		}
	}
	drop, _, _ := unstructured.NestedStringSlice(sc, "capabilities", "drop")
	if !contains(drop, "ALL") {
		t.Errorf("agent drops %v, want ALL", drop)
	}
	dep := find(objs, "Deployment", "sidewatch-operator")
	depContainers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	args, _, _ := unstructured.NestedStringSlice(depContainers[0].(map[string]any), "args")
	if !contains(args, "--leader-elect=true") {
		t.Errorf("operator args %v lack --leader-elect=true", args)
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

// TestLeastPrivilege: no role grants a wildcard verb, resource or API group.
func TestLeastPrivilege(t *testing.T) {
	for _, o := range render(t) {
		if o.GetKind() != "ClusterRole" && o.GetKind() != "Role" {
			continue
		}
		var role rbacv1.ClusterRole
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &role); err != nil {
			t.Fatal(err)
		}
		for _, r := range role.Rules {
			for _, list := range [][]string{r.Verbs, r.Resources, r.APIGroups} {
				if contains(list, "*") {
					t.Errorf("%s %s grants a wildcard: %+v", o.GetKind(), o.GetName(), r)
				}
			}
		}
	}
}

func TestApply(t *testing.T) {
	ctx := context.Background()
	if err := manifests.Apply(ctx, admin, render(t), manifests.Options{}); err != nil {
		t.Fatal(err)
	}
}

// TestAgentNodeRestriction writes findings and heartbeats as the agent of
// node n1, authenticated by a pod-bound service-account token as in a real
// cluster, and checks the API server refuses what belongs to node n2.
func TestAgentNodeRestriction(t *testing.T) {
	ctx := context.Background()
	if err := manifests.Apply(ctx, admin, render(t), manifests.Options{}); err != nil {
		t.Fatal(err)
	}
	n1 := agentClient(t, "n1")

	for _, ns := range []string{"tenant"} {
		if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}

	finding := func(name, node string) *v1alpha1.ThreatFinding {
		now := metav1.NewTime(time.Now().Truncate(time.Second))
		return &v1alpha1.ThreatFinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: name, Labels: map[string]string{v1alpha1.LabelNode: node}},
			Spec: v1alpha1.ThreatFindingSpec{
				Node: node, Type: v1alpha1.BusLockCovertChannel, Severity: v1alpha1.SeverityHigh, Score: 0.9,
				Victim: v1alpha1.Victim{Name: "vm-" + name}, FirstSeen: now, LastSeen: now,
			},
		}
	}
	lease := func(node string) *coordinationv1.Lease {
		return &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: "sidewatch-system", Name: v1alpha1.HeartbeatLeaseName(node)},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(node), LeaseDurationSeconds: ptr.To[int32](40)},
		}
	}
	evidence := func(name, node string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: name, Labels: map[string]string{v1alpha1.LabelNode: node}}}
	}

	// The policy takes effect a moment after it is created: wait until the
	// agent of n1 is refused a finding for n2.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := n1.Create(ctx, finding("probe", "n2"))
		if err != nil && apierrors.IsForbidden(err) || err != nil && apierrors.IsInvalid(err) {
			break
		}
		if err == nil {
			_ = admin.Delete(ctx, finding("probe", "n2"))
		}
		if time.Now().After(deadline) {
			t.Fatalf("the admission policy never refused a foreign finding; last error: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	for _, tc := range []struct {
		name    string
		obj     client.Object
		allowed bool
		want    string
	}{
		{"own finding", finding("own", "n1"), true, ""},
		{"foreign finding", finding("foreign", "n2"), false, "may not write a ThreatFinding for node n2"},
		{"finding labelled for another node", func() client.Object {
			f := finding("mislabelled", "n1")
			f.Labels[v1alpha1.LabelNode] = "n2"
			return f
		}(), false, "must label what it writes sidewatch.io/node=n1"},
		{"own heartbeat", lease("n1"), true, ""},
		{"foreign heartbeat", lease("n2"), false, "may only write its own heartbeat Lease sidewatch-agent-n1"},
		{"own evidence", evidence("ev-own", "n1"), true, ""},
		{"foreign evidence", evidence("ev-foreign", "n2"), false, "must label what it writes sidewatch.io/node=n1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := n1.Create(ctx, tc.obj)
			if tc.allowed {
				if err != nil {
					t.Fatalf("agent of n1 was refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("agent of n1 was allowed, want a refusal")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}

	// An existing finding of n2 (written by n2's agent or an admin) cannot be
	// taken over by n1's agent.
	theirs := finding("theirs", "n2")
	if err := admin.Create(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	theirs.Labels[v1alpha1.LabelNode] = "n1"
	theirs.Spec.Score = 0.1
	if err := n1.Update(ctx, theirs); err == nil {
		t.Error("agent of n1 updated a finding of n2")
	}
}

// agentClient returns a client authenticated as the sidewatch agent running
// on node, with a token bound to a pod on that node: the token then carries
// the node's name, which the admission policy checks.
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
