// Command prometheusrule wraps a Prometheus rules file into a Prometheus
// Operator PrometheusRule object, so config/monitoring/sidewatch.rules.yaml
// (which promtool tests) stays the only place the alerts are written.
//
// Usage: prometheusrule RULES_FILE OUTPUT_FILE
package main

import (
	"fmt"
	"os"

	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: prometheusrule RULES_FILE OUTPUT_FILE")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "prometheusrule:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	raw, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	var spec map[string]any
	if err := yaml.Unmarshal(raw, &spec); err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	if _, ok := spec["groups"]; !ok {
		return fmt.Errorf("%s: no groups", in)
	}
	obj := map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       "PrometheusRule",
		"metadata": map[string]any{
			"name":      "sidewatch",
			"namespace": "sidewatch-system",
			"labels":    map[string]any{"app.kubernetes.io/name": "sidewatch"},
		},
		"spec": spec,
	}
	data, err := yaml.Marshal(obj)
	if err != nil {
		return err
	}
	header := "# Generated from sidewatch.rules.yaml by `make manifests`; do not edit.\n"
	return os.WriteFile(out, append([]byte(header), data...), 0o644)
}
