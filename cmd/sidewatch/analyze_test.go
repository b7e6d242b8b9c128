package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newRootCommand()
	var o, e bytes.Buffer
	cmd.SetOut(&o)
	cmd.SetErr(&e)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return o.String(), e.String(), err
}

func TestTracegenAnalyzeRoundTrip(t *testing.T) {
	dir := t.TempDir()
	tr := filepath.Join(dir, "t.csv")
	if _, _, err := runCLI(t, "tracegen", "--attack", "cache-covert", "--period", "100ms", "--coding", "rz", "--duration", "100s", "--onset", "40s",
		"--neighbours", "database,idle", "--protect", "receiver", "-o", tr); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := runCLI(t, "analyze", "--trace", tr)
	if err != nil {
		t.Fatalf("analyze: %v", err)
	}
	if !strings.Contains(stderr, "detections") {
		t.Errorf("no summary on stderr: %q", stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var d struct {
		TimeNS   int64  `json:"time_ns"`
		Type     string `json:"type"`
		Node     string `json:"node"`
		Victim   struct{ Namespace, Name string }
		Suspects []struct {
			Namespace, Name string
			Score           float64
		}
		Score    float64
		Severity string
		Evidence map[string]any
	}
	if err := json.Unmarshal([]byte(lines[0]), &d); err != nil {
		t.Fatalf("first line %q: %v", lines[0], err)
	}
	if d.Type != "CacheCovertChannel" || d.Node != "node-1" || len(d.Suspects) != 1 || d.Evidence["period_ns"] == nil || d.TimeNS < 40e9 {
		t.Errorf("got %+v", d)
	}
	// With only the receiver protected, the receiver is the victim.
	out, _, err = runCLI(t, "analyze", "--trace", tr, "--protect", "tenant-z/spy-sink", "-o", "table")
	if err != nil || !strings.Contains(out, "tenant-z/spy-sink") || !strings.Contains(out, "CacheCovertChannel") {
		t.Errorf("table with --protect: %v\n%s", err, out)
	}
	// Nobody protected: nothing to report, still exit 0.
	out, _, err = runCLI(t, "analyze", "--trace", tr, "--protect", "nobody/here")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("got %v and %q, want success and no detections", err, out)
	}
}

func TestAnalyzeBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.csv")
	os.WriteFile(bad, []byte("# sidewatch-trace: v1\ntime_ns,node,namespace,vmi,vcpu,event,value\n1,n,ns,v,0,llc_misses,12\n2,n,ns,v,0,llc_mises,3\n"), 0o644)
	_, _, err := runCLI(t, "analyze", "--trace", bad)
	if err == nil || !strings.Contains(err.Error(), "line 4: unknown event \"llc_mises\"") {
		t.Errorf("got %v, want a line 4 error", err)
	}
	if _, _, err := runCLI(t, "analyze", "--trace", filepath.Join(dir, "missing.csv")); err == nil {
		t.Error("a missing file must fail")
	}
	if _, _, err := runCLI(t, "analyze"); err == nil || !strings.Contains(err.Error(), "--trace") {
		t.Errorf("got %v, want --trace required", err)
	}
	pol := filepath.Join(dir, "p.yaml")
	os.WriteFile(pol, []byte("apiVersion: sidewatch.io/v1alpha1\nkind: SideChannelPolicy\nmetadata: {name: p}\nspec:\n  detectors:\n    cacheOscillation: {windw: 5s}\n"), 0o644)
	if _, _, err := runCLI(t, "analyze", "--trace", bad, "--policy", pol); err == nil || !strings.Contains(err.Error(), "windw") {
		t.Errorf("got %v, want the unknown field named", err)
	}
	os.WriteFile(pol, []byte("apiVersion: sidewatch.io/v1alpha1\nkind: SideChannelPolicy\nmetadata: {name: p}\nspec:\n  collection: {interval: 1s}\n  detectors:\n    cacheOscillation: {window: 2s}\n"), 0o644)
	if _, _, err := runCLI(t, "analyze", "--trace", bad, "--policy", pol); err == nil || !strings.Contains(err.Error(), "detectors.cacheOscillation.window") {
		t.Errorf("got %v, want the window named", err)
	}
}

func TestAnalyzePolicySelectors(t *testing.T) {
	dir := t.TempDir()
	tr := filepath.Join(dir, "t.csv")
	if _, _, err := runCLI(t, "tracegen", "--attack", "prime-probe", "--duration", "120s", "--onset", "50s", "--neighbours", "idle", "-o", tr); err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "p.yaml")
	os.WriteFile(pol, []byte(`apiVersion: sidewatch.io/v1alpha1
kind: SideChannelPolicy
metadata: {name: protect-payments}
spec:
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: payments}}
`), 0o644)
	out, _, err := runCLI(t, "analyze", "--trace", tr, "--policy", pol)
	if err != nil || !strings.Contains(out, `"victim":{"namespace":"payments","name":"tls-frontend"}`) || !strings.Contains(out, `"policy":"protect-payments"`) {
		t.Errorf("got %v:\n%s", err, out)
	}
	os.WriteFile(pol, []byte(`apiVersion: sidewatch.io/v1alpha1
kind: SideChannelPolicy
metadata: {name: other}
spec:
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: elsewhere}}
`), 0o644)
	if out, _, err := runCLI(t, "analyze", "--trace", tr, "--policy", pol); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("no protected VMI: got %v and %q", err, out)
	}
}

func TestProfileCommand(t *testing.T) {
	dir := t.TempDir()
	tr := filepath.Join(dir, "t.csv")
	if _, _, err := runCLI(t, "tracegen", "--attack", "none", "--neighbours", "crypto-service", "--duration", "90s", "-o", tr); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, "profile", "--trace", tr, "--vmi", "tenant-b/crypto-service-0", "--configmap", "tls-profile")
	if err != nil || !strings.Contains(out, "kind: ConfigMap") || !strings.Contains(out, "profile.json") || !strings.Contains(out, "sidewatch.io/profile/v1") {
		t.Errorf("got %v:\n%s", err, out)
	}
	if _, _, err := runCLI(t, "profile", "--trace", tr, "--vmi", "tenant-b/nope"); err == nil || !strings.Contains(err.Error(), "no rows") {
		t.Errorf("got %v, want no rows of that VMI", err)
	}
}
