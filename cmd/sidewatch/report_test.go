package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/internal/evidence/evidencetest"
)

func writeYAML(t *testing.T, path string, obj any) {
	t.Helper()
	data, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReportFromFiles renders a report offline from what a responder saves
// with kubectl: the finding, its evidence ConfigMap and its Events.
func TestReportFromFiles(t *testing.T) {
	dir := t.TempDir()
	sc := evidencetest.PrimeProbe(1)
	writeYAML(t, filepath.Join(dir, "finding.yaml"), sc.Finding)
	data, _, err := evidence.Encode(sc.Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	writeYAML(t, filepath.Join(dir, "evidence.yaml"), &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: evidence.ConfigMapName(sc.Finding.Name)},
		BinaryData: map[string][]byte{evidence.DataKey: data},
	})
	events := &corev1.EventList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "List"}}
	for _, e := range sc.Events {
		e.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Event"}
		events.Items = append(events.Items, e)
	}
	unrelated := sc.Events[0]
	unrelated.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Event"}
	unrelated.InvolvedObject = corev1.ObjectReference{Kind: "Pod", Namespace: "payments", Name: "web-1"}
	unrelated.Message = "Back-off restarting failed container"
	events.Items = append(events.Items, unrelated)
	writeYAML(t, filepath.Join(dir, "events.yaml"), events)
	html := filepath.Join(dir, "report.html")

	out, err := runCLI(t, "report", "--from", filepath.Join(dir, "finding.yaml"), "--snapshot", filepath.Join(dir, "evidence.yaml"),
		"--events", filepath.Join(dir, "events.yaml"), "--html", html)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"# Incident report: CacheSideChannel against payments/payments-db",
		"ThreatFinding MigrationStarted", "the victim runs on worker-5",
		"BN_mod_exp_mont_consttime", "probe_set", "## Event trains around the onset",
		"wrote the HTML report to " + html,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "Back-off restarting") {
		t.Error("an unrelated Event is in the timeline")
	}
	page, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`data-plot="event-trains"`, `data-plot="phase-correlation"`, `data-plot="co-scheduling"`} {
		if !strings.Contains(string(page), want) {
			t.Errorf("HTML lacks %s", want)
		}
	}

	// Without the snapshot the report still renders, and says what is
	// missing.
	out, err = runCLI(t, "report", "payments-db-cachesidechannel", "--from", filepath.Join(dir, "finding.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "No evidence snapshot (no --snapshot file given)") || !strings.Contains(out, "no --events file given") {
		t.Errorf("report without snapshot does not say so:\n%.600s", out)
	}
}

func TestReportBadInput(t *testing.T) {
	dir := t.TempDir()
	two := filepath.Join(dir, "two.yaml")
	a, b := evidencetest.PrimeProbe(1).Finding, evidencetest.CovertChannel(1).Finding
	list := &v1alpha1.ThreatFindingList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "List"}, Items: []v1alpha1.ThreatFinding{*a, *b}}
	writeYAML(t, two, list)
	other := filepath.Join(dir, "other.json.gz")
	data, _, err := evidence.Encode(evidencetest.BusLock(1).Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"report", "--from", two}, "holds 2 findings (payments/payments-db-cachesidechannel, payments/payments-db-cachecovertchannel): name one"},
		{[]string{"report", "nope", "--from", two}, `no finding named "nope"`},
		{[]string{"report", "--from", "/nonexistent"}, "--from"},
		{[]string{"report", "payments-db-cachesidechannel", "--from", two, "--snapshot", other}, "the snapshot belongs to finding payments/payments-db-buslockcovertchannel"},
		{[]string{"report", "payments-db-cachesidechannel", "--from", two, "--snapshot", two}, "--snapshot"},
		{[]string{"report", "x", "--events", two}, "--events needs --from"},
		{[]string{"report", "a", "b"}, "accepts at most 1 arg"},
	} {
		_, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// TestReportFromCluster reads the finding, its evidence ConfigMap and its
// Events from a real API server through the usual kubeconfig flags.
func TestReportFromCluster(t *testing.T) {
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
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	c, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "payments"}}); err != nil {
		t.Fatal(err)
	}

	sc := evidencetest.CovertChannel(1)
	f := &v1alpha1.ThreatFinding{ObjectMeta: metav1.ObjectMeta{Namespace: "payments", Name: sc.Finding.Name, Labels: sc.Finding.Labels}, Spec: sc.Finding.Spec}
	if err := c.Create(ctx, f); err != nil {
		t.Fatal(err)
	}
	ref, err := evidence.Save(ctx, c, f, sc.Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	f.Status = sc.Finding.Status
	f.Status.Evidence = &ref
	if err := c.Status().Update(ctx, f); err != nil {
		t.Fatal(err)
	}
	for _, e := range sc.Events {
		e.ResourceVersion = ""
		e.InvolvedObject.UID = f.UID
		e.FirstTimestamp, e.LastTimestamp = metav1.NewTime(e.EventTime.Time), metav1.NewTime(e.EventTime.Time)
		e.EventTime = metav1.MicroTime{}
		e.ReportingController, e.ReportingInstance, e.Action = "", "", ""
		e.Source = corev1.EventSource{Component: "sidewatch-operator"}
		if err := c.Create(ctx, &e); err != nil {
			t.Fatalf("event: %v", err)
		}
	}

	html := filepath.Join(t.TempDir(), "incident.html")
	out, err := runCLI(t, "report", f.Name, "--kubeconfig", kubeconfig, "-n", "payments", "--html", html)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"# Incident report: CacheCovertChannel against payments/payments-db",
		"event | ThreatFinding MigrationSucceeded: migration payments-db-sidewatch-1 moved VMI payments-db",
		"cache-sync", "receive_bit", "at 20ms", "| ConfigMap | payments/" + ref.ConfigMapName + " |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "No evidence snapshot") || strings.Contains(out, "Events are missing") {
		t.Errorf("the report missed what the cluster holds:\n%.800s", out)
	}
	page, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(page), "<svg"); n != 5 {
		t.Errorf("HTML has %d plots, want 5", n)
	}

	if _, err := runCLI(t, "report", "missing", "--kubeconfig", kubeconfig, "-n", "payments"); err == nil || !strings.Contains(err.Error(), "threatfinding missing not found in namespace payments") {
		t.Errorf("missing finding: %v", err)
	}
}
