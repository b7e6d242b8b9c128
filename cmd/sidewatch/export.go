package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/stix"
)

type exportOptions struct {
	kube        *kubeOptions
	stix        bool
	from        string
	since       string
	types       []string
	clusterName string
	output      string
}

func newExportCommand() *cobra.Command {
	o := &exportOptions{kube: newKubeOptions()}
	cmd := &cobra.Command{
		Use:   "export --stix [--from FILE]",
		Short: "Export ThreatFindings as a STIX 2.1 bundle",
		Long: `Export ThreatFindings as a STIX 2.1 bundle for threat-intelligence sharing.

Findings are read from the cluster (all namespaces unless -n is given) or,
with --from, from a file saved by 'kubectl get threatfindings -A -o yaml'.
Exporting the same findings twice yields the same objects (identifiers are
UUIDv5 derived from each finding's UID).`,
		Example: `  sidewatch export --stix > findings.stix.json
  sidewatch export --stix -n payments --since 24h --type CacheSideChannel
  kubectl get threatfindings -A -o yaml > saved.yaml && sidewatch export --stix --from saved.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd) },
	}
	cmd.Flags().BoolVar(&o.stix, "stix", false, "write a STIX 2.1 bundle (the only format for now; required)")
	cmd.Flags().StringVar(&o.from, "from", "", "read findings from this file (YAML or JSON, a List or one object) instead of the cluster; - reads stdin")
	cmd.Flags().StringVar(&o.since, "since", "", "only findings last seen within this duration (e.g. 24h) or since this RFC 3339 time")
	cmd.Flags().StringSliceVar(&o.types, "type", nil, "only findings of these types: CacheCovertChannel, CacheSideChannel, BusLockCovertChannel")
	cmd.Flags().StringVar(&o.clusterName, "cluster-name", "", "name of the cluster identity (default: the kubeconfig context's cluster, or \"kubernetes\")")
	cmd.Flags().StringVarP(&o.output, "output-file", "f", "", "write the bundle to this file instead of stdout")
	o.kube.AddFlags(cmd.Flags())
	return cmd
}

func (o *exportOptions) run(cmd *cobra.Command) error {
	if !o.stix {
		return errors.New("--stix is required: STIX 2.1 is the export format")
	}
	opts := stix.Options{ClusterName: o.clusterName}
	if ns, set := o.kube.Namespace(); set {
		opts.Namespace = ns
	}
	since, err := parseSince(o.since, time.Now())
	if err != nil {
		return err
	}
	opts.Since = since
	for _, t := range o.types {
		tt := v1alpha1.ThreatType(t)
		if tt != v1alpha1.CacheCovertChannel && tt != v1alpha1.CacheSideChannel && tt != v1alpha1.BusLockCovertChannel {
			return fmt.Errorf("--type %q: want CacheCovertChannel, CacheSideChannel or BusLockCovertChannel", t)
		}
		opts.Types = append(opts.Types, tt)
	}

	var findings []v1alpha1.ThreatFinding
	if o.from != "" {
		findings, err = readFindingsFile(o.from, cmd.InOrStdin())
	} else {
		findings, err = o.readFindingsCluster(cmd, opts.Namespace)
		if opts.ClusterName == "" {
			opts.ClusterName = o.kube.ClusterName()
		}
	}
	if err != nil {
		return err
	}

	out := cmd.OutOrStdout()
	if o.output != "" {
		f, err := os.Create(o.output)
		if err != nil {
			return err
		}
		defer f.Close()
		out = f
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(stix.Export(findings, opts))
}

func readFindingsFile(path string, stdin io.Reader) ([]v1alpha1.ThreatFinding, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	findings, err := stix.ParseFindings(data)
	if err != nil {
		return nil, fmt.Errorf("--from %s: %w", path, err)
	}
	return findings, nil
}

func (o *exportOptions) readFindingsCluster(cmd *cobra.Command, namespace string) ([]v1alpha1.ThreatFinding, error) {
	c, err := o.kube.Client()
	if err != nil {
		return nil, err
	}
	var list v1alpha1.ThreatFindingList
	var opts []client.ListOption
	if namespace != "" {
		opts = append(opts, client.InNamespace(namespace))
	}
	if err := c.List(cmd.Context(), &list, opts...); err != nil {
		return nil, fmt.Errorf("list threatfindings: %w", err)
	}
	return list.Items, nil
}

// parseSince accepts a duration back from now or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: the duration must be positive", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want a duration such as 24h or an RFC 3339 time such as 2026-11-23T00:00:00Z", strings.TrimSpace(s))
}
