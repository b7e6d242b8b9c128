package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/stix"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestExportFromFile(t *testing.T) {
	out, err := runCLI(t, "export", "--stix", "--from", filepath.Join("..", "..", "config", "samples", "threatfinding_exported.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var b stix.Bundle
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("output is not a bundle: %v\n%s", err, out)
	}
	if b.Type != "bundle" || len(b.Objects) < 10 {
		t.Errorf("bundle %s with %d objects", b.Type, len(b.Objects))
	}
	again, _ := runCLI(t, "export", "--stix", "--from", filepath.Join("..", "..", "config", "samples", "threatfinding_exported.yaml"))
	if again != out {
		t.Error("exporting twice gave different bundles")
	}
}

func TestExportBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"export"}, "--stix is required"},
		{[]string{"export", "--stix", "--from", "/nonexistent"}, "--from"},
		{[]string{"export", "--stix", "--from", "-", "--since", "yesterday"}, "--since \"yesterday\""},
		{[]string{"export", "--stix", "--from", "-", "--type", "Rowhammer"}, "--type \"Rowhammer\""},
	} {
		_, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// TestExportFromCluster reads findings from a real API server through the
// usual kubeconfig flags.
func TestExportFromCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
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
	opts := newKubeOptions()
	*opts.flags.KubeConfig = kubeconfig
	c, err := opts.Client()
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	for _, ns := range []string{"a", "b"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
		f := &v1alpha1.ThreatFinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "f"},
			Spec: v1alpha1.ThreatFindingSpec{Node: "n1", Type: v1alpha1.CacheCovertChannel, Severity: v1alpha1.SeverityHigh, Score: 0.7,
				Victim: v1alpha1.Victim{Name: "vm"}, FirstSeen: now, LastSeen: now},
		}
		if err := c.Create(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	count := func(args ...string) int {
		out, err := runCLI(t, append([]string{"export", "--stix", "--kubeconfig", kubeconfig}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(out, `"type": "sighting"`)
	}
	if got := count(); got != 2 {
		t.Errorf("all namespaces: %d sightings, want 2", got)
	}
	if got := count("-n", "a"); got != 1 {
		t.Errorf("-n a: %d sightings, want 1", got)
	}
	_ = os.Remove(kubeconfig)
}
