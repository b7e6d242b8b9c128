package manifests_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/manifests"
)

func monitoringDir(t *testing.T) string {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "config", "monitoring")
}

func promtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install Debian's prometheus package (apt-get install prometheus); .ci/run does")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestAlertRules checks the rules with promtool and runs the unit test of
// every alert.
func TestAlertRules(t *testing.T) {
	dir := monitoringDir(t)
	promtool(t, dir, "check", "rules", "sidewatch.rules.yaml")
	out := promtool(t, dir, "test", "rules", "sidewatch.rules.test.yaml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %s", out)
	}

	// Every alert has at least one unit test that expects it to fire.
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
			} `json:"rules"`
		} `json:"groups"`
	}
	readYAML(t, filepath.Join(dir, "sidewatch.rules.yaml"), &rules)
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	readYAML(t, filepath.Join(dir, "sidewatch.rules.test.yaml"), &tests)
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !fires[r.Alert] {
				t.Errorf("alert %s has no promtool test case in which it fires", r.Alert)
			}
		}
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestMonitoringManifests: the kustomize tree, the generated PrometheusRule
// and the chart carry the same rules and dashboard.
func TestMonitoringManifests(t *testing.T) {
	dir := monitoringDir(t)
	objs, err := manifests.Build(dir)
	if err != nil {
		t.Fatal(err)
	}
	var rule, dashboard *unstructured.Unstructured
	for _, o := range objs {
		switch {
		case o.GetKind() == "PrometheusRule":
			rule = o
		case o.GetKind() == "ConfigMap" && o.GetLabels()["grafana_dashboard"] == "1":
			dashboard = o
		}
	}
	if rule == nil || dashboard == nil {
		t.Fatalf("config/monitoring lacks the PrometheusRule (%v) or the labelled dashboard ConfigMap (%v)", rule != nil, dashboard != nil)
	}
	var fromFile map[string]any
	readYAML(t, filepath.Join(dir, "sidewatch.rules.yaml"), &fromFile)
	spec, _, _ := unstructured.NestedMap(rule.Object, "spec")
	if !equality.Semantic.DeepEqual(normalize(t, spec), normalize(t, fromFile)) {
		t.Error("config/monitoring/prometheusrule.yaml is stale: run make manifests")
	}

	chartFiles := filepath.Join(dir, "..", "..", "charts", "sidewatch", "files")
	for _, f := range []string{"sidewatch.rules.yaml", "grafana-dashboard.json"} {
		a, _ := os.ReadFile(filepath.Join(dir, f))
		b, err := os.ReadFile(filepath.Join(chartFiles, f))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("charts/sidewatch/files/%s is not a copy of config/monitoring (run make manifests)", f)
		}
	}

	chart := helmTemplate(t, "metrics.prometheusRule.enabled=true", "metrics.serviceMonitor.enabled=true")
	if find(chart, "PrometheusRule", "sidewatch") == nil || find(chart, "ConfigMap", "sidewatch-grafana-dashboard") == nil {
		t.Error("the chart does not render the PrometheusRule and the dashboard ConfigMap")
	}
}

func normalize(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

// Dashboard is the part of Grafana's dashboard JSON the tests read.
type Dashboard struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Panels []struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func TestDashboardShape(t *testing.T) {
	var d Dashboard
	raw, err := os.ReadFile(filepath.Join(monitoringDir(t), "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	want := []string{"findings", "migration", "latency", "agent cpu", "unmonitored"}
	var titles []string
	for _, p := range d.Panels {
		titles = append(titles, strings.ToLower(p.Title))
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if strings.Contains(q.Expr, "$") {
				t.Errorf("panel %q query %q uses a Grafana variable: queries must run verbatim in Prometheus", p.Title, q.Expr)
			}
		}
	}
	all := strings.Join(titles, "|")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("no dashboard panel about %q (panels: %v)", w, titles)
		}
	}
}
