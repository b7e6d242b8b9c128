package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/detect"
)

func newAnalyzeCommand() *cobra.Command {
	var (
		tracePath, policyPath, output string
		profiles, protect, vmiLabels  []string
		series                        bool
	)
	cmd := &cobra.Command{
		Use:   "analyze --trace FILE",
		Short: "Replay a trace through the detectors and print what they find",
		Long: `analyze replays a trace (docs/trace-format.md) through the same engine the node
agent runs and prints one JSON object per detection (or a table). It exits 0
whether or not anything was found, and non-zero only on bad input.

Without --policy every VMI is protected with the default settings. With
--policy the policy's detector settings apply, and its selectors decide which
VMIs are protected: a trace carries no labels, so namespaces have only
kubernetes.io/metadata.name=<namespace> and VMIs the labels given with
--vmi-label; --protect names protected VMIs outright.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tracePath == "" {
				return errors.New("--trace is required (a file, or - for standard input)")
			}
			if output != "json" && output != "table" {
				return fmt.Errorf("--output %q: want json or table", output)
			}
			cfg, err := analyzeConfig(policyPath, profiles, protect, vmiLabels)
			if err != nil {
				return err
			}
			var src io.Reader = cmd.InOrStdin()
			if tracePath != "-" {
				f, err := os.Open(tracePath)
				if err != nil {
					return err
				}
				defer f.Close()
				src = f
			}
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			var tw *tabwriter.Writer
			if output == "table" {
				tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "TIME\tTYPE\tNODE\tVICTIM\tSUSPECTS\tSCORE\tSEVERITY\tDETAIL")
			}
			start := time.Now()
			sum, err := detect.Replay(cmd.Context(), src, cfg, detect.ReplayOptions{Emit: func(d *detect.Detection) error {
				if tw != nil {
					return writeDetectionRow(tw, d)
				}
				if !series {
					d.Series = nil
				}
				return enc.Encode(d)
			}})
			if tw != nil {
				tw.Flush()
			}
			if err != nil {
				return fmt.Errorf("%s: %w", tracePath, err)
			}
			el := time.Since(start)
			fmt.Fprintf(cmd.ErrOrStderr(), "analyzed %d rows (%d samples) of %d VMIs on %d nodes, %s of trace, in %v (%.0f rows/s): %d detections\n",
				sum.Rows, sum.Samples, sum.VMIs, sum.Nodes, time.Duration(sum.LastNS-sum.FirstNS).Round(time.Millisecond), el.Round(time.Millisecond), float64(sum.Rows)/el.Seconds(), sum.Detections)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&tracePath, "trace", "", "trace file (- for standard input)")
	f.StringVar(&policyPath, "policy", "", "SideChannelPolicy YAML whose settings and selectors apply")
	f.StringVarP(&output, "output", "o", "json", "json (one object per line) or table")
	f.StringArrayVar(&profiles, "profile", nil, "NAME=FILE: the profile.json of the ConfigMap NAME a signature's profileConfigMap names")
	f.StringArrayVar(&protect, "protect", nil, "namespace/name of a VMI to protect (repeatable); overrides the policy's selectors")
	f.StringArrayVar(&vmiLabels, "vmi-label", nil, "namespace/name:key=value labels of a VMI for the policy's vmiSelector (repeatable)")
	f.BoolVar(&series, "series", false, "include each detection's plot series in the JSON")
	return cmd
}

func writeDetectionRow(w io.Writer, d *detect.Detection) error {
	var sus []string
	for _, s := range d.Suspects {
		r := ""
		if s.Role != "" && s.Role != detect.RoleUnknown {
			r = "(" + string(s.Role) + ")"
		}
		sus = append(sus, fmt.Sprintf("%s%s:%.2f", s.VMIRef, r, s.Score))
	}
	if len(sus) == 0 {
		sus = []string{"-"}
	}
	ev := d.Evidence
	var detail string
	switch d.Type {
	case v1alpha1.CacheCovertChannel:
		detail = fmt.Sprintf("period=%v bits/s=%.1f corr=%.2f", time.Duration(ev.PeriodNS).Round(time.Microsecond), ev.BitsPerSecond, ev.Correlation)
	case v1alpha1.BusLockCovertChannel:
		detail = fmt.Sprintf("period=%v bursts=%d regularity=%.2f locks/s=%.0f", time.Duration(ev.PeriodNS).Round(time.Microsecond), ev.Bursts, ev.Regularity, ev.LocksPerSecond)
	case v1alpha1.CacheSideChannel:
		detail = fmt.Sprintf("signature=%s corr=%.2f anomaly=%.1f", ev.Signature, ev.Correlation, ev.AnomalyScore)
	}
	_, err := fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t%s\n", time.Duration(d.TimeNS).Round(time.Millisecond), d.Type, d.Node, d.Victim, strings.Join(sus, ","), d.Score, d.Severity, detail)
	return err
}

// loadPolicy reads a SideChannelPolicy from YAML (or JSON), strictly.
func loadPolicy(path string) (*v1alpha1.SideChannelPolicy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var p v1alpha1.SideChannelPolicy
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	if p.Kind != "SideChannelPolicy" {
		return nil, fmt.Errorf("policy %s: kind is %q, want SideChannelPolicy (apiVersion sidewatch.io/v1alpha1)", path, p.Kind)
	}
	return &p, nil
}

func profileLoader(specs []string) (detect.ProfileLoader, error) {
	files := map[string]string{}
	for _, s := range specs {
		name, file, ok := strings.Cut(s, "=")
		if !ok || name == "" || file == "" {
			return nil, fmt.Errorf("--profile %q: want NAME=FILE", s)
		}
		files[name] = file
	}
	return func(cm string) (*detect.Profile, error) {
		file, ok := files[cm]
		if !ok {
			return nil, fmt.Errorf("no --profile %s=FILE given", cm)
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		return detect.ParseProfile(data)
	}, nil
}

// analyzeConfig builds the engine configuration for analyze and profile.
func analyzeConfig(policyPath string, profiles, protect, vmiLabels []string) (detect.Config, error) {
	load, err := profileLoader(profiles)
	if err != nil {
		return detect.Config{}, err
	}
	if policyPath == "" {
		cfg := detect.DefaultConfig()
		prot, err := detect.ProtectionFromPolicy("", v1alpha1.SideChannelPolicySpec{}, load)
		if err != nil {
			return cfg, err
		}
		if len(protect) > 0 {
			return withProtected(cfg, prot, protect)
		}
		cfg.DefaultProtection = prot
		return cfg, nil
	}
	pol, err := loadPolicy(policyPath)
	if err != nil {
		return detect.Config{}, err
	}
	cfg := detect.ConfigFromPolicy(pol.Spec)
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("policy %s: %w", policyPath, err)
	}
	prot, err := detect.ProtectionFromPolicy(pol.Name, pol.Spec, load)
	if err != nil {
		return cfg, fmt.Errorf("policy %s: %w", policyPath, err)
	}
	if len(protect) > 0 {
		return withProtected(cfg, prot, protect)
	}
	nsSel, err := selector(pol.Spec.NamespaceSelector)
	if err != nil {
		return cfg, fmt.Errorf("policy %s: spec.namespaceSelector: %w", policyPath, err)
	}
	vmiSel, err := selector(pol.Spec.VMISelector)
	if err != nil {
		return cfg, fmt.Errorf("policy %s: spec.vmiSelector: %w", policyPath, err)
	}
	vl := map[detect.VMIRef]labels.Set{}
	for _, s := range vmiLabels {
		ref, kv, ok := strings.Cut(s, ":")
		k, v, ok2 := strings.Cut(kv, "=")
		r, err := parseRef(ref)
		if !ok || !ok2 || err != nil || k == "" {
			return cfg, fmt.Errorf("--vmi-label %q: want namespace/name:key=value", s)
		}
		if vl[r] == nil {
			vl[r] = labels.Set{}
		}
		vl[r][k] = v
	}
	cfg.ProtectionFor = func(r detect.VMIRef) *detect.Protection {
		if nsSel.Matches(labels.Set{"kubernetes.io/metadata.name": r.Namespace}) && vmiSel.Matches(vl[r]) {
			return prot
		}
		return nil
	}
	return cfg, nil
}

func selector(s *metav1.LabelSelector) (labels.Selector, error) {
	if s == nil {
		return labels.Everything(), nil
	}
	return metav1.LabelSelectorAsSelector(s)
}

func withProtected(cfg detect.Config, prot *detect.Protection, refs []string) (detect.Config, error) {
	set := map[detect.VMIRef]bool{}
	for _, s := range refs {
		r, err := parseRef(s)
		if err != nil {
			return cfg, fmt.Errorf("--protect: %w", err)
		}
		set[r] = true
	}
	cfg.ProtectionFor = func(r detect.VMIRef) *detect.Protection {
		if set[r] {
			return prot
		}
		return nil
	}
	return cfg, nil
}

func parseRef(s string) (detect.VMIRef, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return detect.VMIRef{}, fmt.Errorf("%q is not namespace/name", s)
	}
	return detect.VMIRef{Namespace: ns, Name: name}, nil
}
