// Package e2e runs the demo path non-interactively: the real operator and
// node agent processes, a recorded attack, a virt-controller stand-in, a
// real Prometheus scraping both, then the responder's tools.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/demo"
	"github.com/sidewatch/sidewatch/internal/stix"
)

func TestDemoEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	var narration strings.Builder
	d, err := demo.Start(ctx, demo.Options{Out: &narration, WorkDir: t.TempDir()})
	if err != nil {
		t.Fatalf("%v\n%s", err, narration.String())
	}
	defer d.Stop()
	prom := startPrometheus(t, ctx, d)

	res, err := d.WaitMitigated(ctx, 3*time.Minute)
	if err != nil {
		t.Fatalf("%v\n%s", err, narration.String())
	}
	t.Logf("victim moved %s -> %s in %s", res.VictimBefore, res.VictimAfter, res.Elapsed.Round(time.Second))

	t.Run("victim landed on an allowed node", func(t *testing.T) {
		f := res.Finding
		if res.VictimAfter == "" || res.VictimAfter == demo.AttackedNode {
			t.Fatalf("victim on %q, want a node other than %s", res.VictimAfter, demo.AttackedNode)
		}
		if f.Spec.Type != v1alpha1.CacheCovertChannel || f.Spec.Node != demo.AttackedNode {
			t.Errorf("finding %s on %s, want CacheCovertChannel on %s", f.Spec.Type, f.Spec.Node, demo.AttackedNode)
		}
		if len(f.Spec.Suspects) == 0 || f.Spec.Suspects[0].Namespace != demo.Attacker.Namespace || f.Spec.Suspects[0].Name != demo.Attacker.Name {
			t.Errorf("suspects %+v, want %s first", f.Spec.Suspects, demo.Attacker)
		}
		for _, s := range f.Spec.Suspects {
			if s.Name == demo.Bystander.Name {
				t.Errorf("the bystander %s is a suspect", demo.Bystander)
			}
		}
		m := f.Status.Migration
		if m == nil || m.TargetNode != res.VictimAfter || m.Result != "Succeeded" {
			t.Fatalf("migration status %+v, want Succeeded to %s", m, res.VictimAfter)
		}
		for _, x := range m.ExcludedNodes {
			if x == res.VictimAfter {
				t.Errorf("target %s was excluded %v", x, m.ExcludedNodes)
			}
		}
		if !contains(m.ExcludedNodes, demo.AttackedNode) {
			t.Errorf("excluded nodes %v lack the attacked node", m.ExcludedNodes)
		}
	})

	t.Run("dashboard queries return data", func(t *testing.T) {
		// Let Prometheus scrape the final counters.
		time.Sleep(4 * time.Second)
		for _, q := range dashboardQueries(t) {
			n, err := prom.query(ctx, q)
			if err != nil {
				t.Errorf("%s: %v", q, err)
			} else if n == 0 {
				t.Errorf("%s returned no data", q)
			}
		}
	})

	t.Run("incident report", func(t *testing.T) {
		html := filepath.Join(d.WorkDir(), "report.html")
		out, err := exec.CommandContext(ctx, d.CLI, "report", "--kubeconfig", d.Kubeconfig, "-n", res.Finding.Namespace, res.Finding.Name, "--html", html).CombinedOutput()
		if err != nil {
			t.Fatalf("sidewatch report: %v\n%s", err, out)
		}
		for _, want := range []string{"# Incident report: CacheCovertChannel", demo.Attacker.String(), "moved", res.VictimAfter} {
			if !strings.Contains(string(out), want) {
				t.Errorf("report lacks %q", want)
			}
		}
		page, err := os.ReadFile(html)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(page), "<svg"); n < 3 {
			t.Errorf("HTML report has %d plots, want the event trains, the autocorrelation and more", n)
		}
	})

	t.Run("STIX export", func(t *testing.T) {
		out, err := exec.CommandContext(ctx, d.CLI, "export", "--stix", "--kubeconfig", d.Kubeconfig).Output()
		if err != nil {
			t.Fatalf("sidewatch export: %v", err)
		}
		var b stix.Bundle
		if err := json.Unmarshal(out, &b); err != nil {
			t.Fatal(err)
		}
		kinds := map[string]int{}
		for _, o := range b.Objects {
			m := o.(map[string]any)
			kinds[m["type"].(string)]++
			if m["spec_version"] != nil && m["spec_version"] != "2.1" {
				t.Errorf("object %v has spec_version %v", m["id"], m["spec_version"])
			}
		}
		if kinds["sighting"] != 1 || kinds["observed-data"] != 1 || kinds["attack-pattern"] != 1 {
			t.Errorf("bundle objects %v, want one sighting of one attack pattern", kinds)
		}
	})

	t.Run("evidence is garbage-collected with its finding", func(t *testing.T) {
		f := res.Finding
		if f.Status.Evidence == nil {
			t.Fatal("the finding's status has no evidence snapshot")
		}
		key := types.NamespacedName{Namespace: f.Namespace, Name: f.Status.Evidence.ConfigMapName}
		var cm corev1.ConfigMap
		if err := d.Client().Get(ctx, key, &cm); err != nil {
			t.Fatalf("evidence ConfigMap: %v", err)
		}
		if err := d.Client().Delete(ctx, f); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(90 * time.Second)
		for {
			err := d.Client().Get(ctx, key, &cm)
			if apierrors.IsNotFound(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("evidence ConfigMap %s still exists 90s after its finding was deleted (%v)", key, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
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

// dashboardQueries are the PromQL expressions of every panel of the
// shipped Grafana dashboard.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "config", "monitoring", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	var qs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			qs = append(qs, tg.Expr)
		}
	}
	if len(qs) < 10 {
		t.Fatalf("the dashboard has %d queries", len(qs))
	}
	return qs
}

type prometheus struct{ addr string }

// startPrometheus runs Debian's prometheus, scraping the operator and the
// agent every second with the job and node labels the shipped
// ServiceMonitors give them.
func startPrometheus(t *testing.T, ctx context.Context, d *demo.Demo) *prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found: install Debian's prometheus package (apt-get install prometheus); .ci/run does")
	}
	dir := t.TempDir()
	listen := freePort(t)
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
- job_name: sidewatch-operator
  static_configs:
  - targets: [%q]
- job_name: sidewatch-agent
  static_configs:
  - targets: [%q]
    labels:
      node: %s
`, d.OperatorMetrics, d.AgentMetrics, demo.AttackedNode)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+listen, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	})
	p := &prometheus{addr: listen}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if n, err := p.query(ctx, `up{job=~"sidewatch-.*"} == 1`); err == nil && n == 2 {
			return p
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Fatalf("prometheus did not scrape the operator and the agent within 60s:\n%s", b)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// query evaluates an instant query and returns how many series it found.
func (p *prometheus) query(ctx context.Context, q string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, err
	}
	if body.Status != "success" {
		return 0, fmt.Errorf("prometheus: %s", body.Error)
	}
	n := 0
	for _, r := range body.Data.Result {
		// NaN (e.g. a quantile of an empty histogram) is not data.
		if len(r.Value) == 2 && r.Value[1] != "NaN" {
			n++
		}
	}
	return n, nil
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
