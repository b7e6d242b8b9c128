package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/internal/report"
	"github.com/sidewatch/sidewatch/internal/stix"
)

type reportOptions struct {
	kube     *kubeOptions
	html     string
	from     string
	snapshot string
	events   string
}

func newReportCommand() *cobra.Command {
	o := &reportOptions{kube: newKubeOptions()}
	cmd := &cobra.Command{
		Use:   "report FINDING [--html FILE]",
		Short: "Print the incident report of a ThreatFinding, and write it as HTML with plots",
		Long: `Print the incident report of a ThreatFinding as Markdown: the timeline
(first evidence, finding created, migration started and finished, target
node), who and what (victim, suspects, guest processes and libraries), the
actions taken, the detector's figures and sparklines of the evidence.

With --html, also write the report as one self-contained HTML file with SVG
plots (event trains of victim and suspects around the onset, the
autocorrelation with its peak, burst periods or phase correlation, and the
co-scheduling overlap); it needs no network and runs no script.

The finding, its evidence snapshot (the ConfigMap it owns) and its Events
are read from the cluster. For offline use, give the finding with --from
(saved with 'kubectl get threatfinding NAME -o yaml'), its snapshot with
--snapshot (saved with 'kubectl get configmap NAME-evidence -o yaml') and,
optionally, its Events with --events ('kubectl get events -o yaml').`,
		Example: `  sidewatch report payments-db-cachesidechannel -n payments --html incident.html
  kubectl get threatfinding payments-db-cachesidechannel -n payments -o yaml > finding.yaml
  kubectl get configmap payments-db-cachesidechannel-evidence -n payments -o yaml > evidence.yaml
  sidewatch report --from finding.yaml --snapshot evidence.yaml --html incident.html`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			return o.run(cmd, name)
		},
	}
	cmd.Flags().StringVar(&o.html, "html", "", "also write the report as a self-contained HTML file with plots")
	cmd.Flags().StringVar(&o.from, "from", "", "read the finding from this file (YAML or JSON, as kubectl get -o yaml saves it) instead of the cluster")
	cmd.Flags().StringVar(&o.snapshot, "snapshot", "", "read the evidence snapshot from this file: the ConfigMap saved with kubectl get -o yaml, or the snapshot's gzip or JSON")
	cmd.Flags().StringVar(&o.events, "events", "", "with --from, read the finding's Events from this file (kubectl get events -o yaml)")
	o.kube.AddFlags(cmd.Flags())
	return cmd
}

func (o *reportOptions) run(cmd *cobra.Command, name string) error {
	if o.events != "" && o.from == "" {
		return errors.New("--events needs --from: online, the Events are read from the cluster")
	}
	in := report.Input{GeneratedAt: time.Now().UTC()}
	var err error
	if o.from != "" {
		err = o.fromFiles(name, &in)
	} else {
		err = o.fromCluster(cmd, name, &in)
	}
	if err != nil {
		return err
	}
	if o.snapshot != "" {
		data, err := os.ReadFile(o.snapshot)
		if err != nil {
			return fmt.Errorf("--snapshot: %w", err)
		}
		s, err := evidence.ParseFile(data)
		if err != nil {
			return fmt.Errorf("--snapshot %s: %w", o.snapshot, err)
		}
		f := in.Finding
		if s.Finding.UID != "" && f.UID != "" && s.Finding.UID != f.UID {
			return fmt.Errorf("--snapshot %s: the snapshot belongs to finding %s/%s (uid %s), not to %s/%s (uid %s)", o.snapshot, s.Finding.Namespace, s.Finding.Name, s.Finding.UID, f.Namespace, f.Name, f.UID)
		}
		in.Snapshot, in.SnapshotNote = s, ""
	}

	r := report.Build(in)
	if err := r.Markdown(cmd.OutOrStdout()); err != nil {
		return err
	}
	if o.html != "" {
		if err := writeFile(o.html, r.HTML); err != nil {
			return fmt.Errorf("--html: %w", err)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "wrote the HTML report to %s\n", o.html)
	}
	return nil
}

// writeFile writes through a temporary file, so an existing report is
// never left half written.
func writeFile(path string, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(dirOf(path), ".sidewatch-report-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[:i+1]
	}
	return "."
}

func (o *reportOptions) fromFiles(name string, in *report.Input) error {
	data, err := os.ReadFile(o.from)
	if err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	findings, err := stix.ParseFindings(data)
	if err != nil {
		return fmt.Errorf("--from %s: %w", o.from, err)
	}
	ns, nsSet := o.kube.Namespace()
	var match []v1alpha1.ThreatFinding
	for _, f := range findings {
		if (name == "" || f.Name == name) && (!nsSet || f.Namespace == ns) {
			match = append(match, f)
		}
	}
	switch {
	case len(match) == 0 && name != "":
		return fmt.Errorf("--from %s: no finding named %q%s", o.from, name, inNamespace(ns, nsSet))
	case len(match) == 0:
		return fmt.Errorf("--from %s: no ThreatFinding in the file%s", o.from, inNamespace(ns, nsSet))
	case len(match) > 1:
		var names []string
		for _, f := range match {
			names = append(names, f.Namespace+"/"+f.Name)
		}
		return fmt.Errorf("--from %s holds %d findings (%s): name one, and use -n for the namespace", o.from, len(match), strings.Join(names, ", "))
	}
	in.Finding = &match[0]
	in.Source = "files " + o.from
	in.SnapshotNote = "no --snapshot file given"
	if o.events != "" {
		data, err := os.ReadFile(o.events)
		if err != nil {
			return fmt.Errorf("--events: %w", err)
		}
		events, err := parseEvents(data)
		if err != nil {
			return fmt.Errorf("--events %s: %w", o.events, err)
		}
		in.Events = relatedEvents(in.Finding, events)
	} else {
		in.EventsNote = "no --events file given"
	}
	return nil
}

func inNamespace(ns string, set bool) string {
	if set {
		return " in namespace " + ns
	}
	return ""
}

func (o *reportOptions) fromCluster(cmd *cobra.Command, name string, in *report.Input) error {
	if name == "" {
		return errors.New("name the finding: sidewatch report FINDING (or give --from FILE)")
	}
	c, err := o.kube.Client()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	ns, _ := o.kube.Namespace()
	f := &v1alpha1.ThreatFinding{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, f); err != nil {
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("threatfinding %s not found in namespace %s (choose the namespace with -n)", name, ns)
		}
		return fmt.Errorf("get threatfinding %s/%s: %w", ns, name, err)
	}
	in.Finding = f
	in.Source = "namespace " + ns
	if cluster := o.kube.ClusterName(); cluster != "" {
		in.Source = "cluster " + cluster + ", " + in.Source
	}
	if o.snapshot == "" {
		s, _, err := evidence.Load(ctx, c, f)
		switch {
		case err == nil:
			in.Snapshot = s
		case errors.Is(err, evidence.ErrNotFound):
			in.SnapshotNote = fmt.Sprintf("ConfigMap %s not found; the agent may not have captured one", evidence.ConfigMapName(f.Name))
		default:
			in.SnapshotNote = err.Error()
		}
	}
	in.Events, err = clusterEvents(cmd, c, f)
	if err != nil {
		in.EventsNote = err.Error()
	}
	return nil
}

// clusterEvents lists the Events about the finding, its migration and, from
// shortly before the first evidence, its victim.
func clusterEvents(cmd *cobra.Command, c client.Client, f *v1alpha1.ThreatFinding) ([]corev1.Event, error) {
	ctx := cmd.Context()
	selectors := []client.MatchingFields{{"involvedObject.uid": string(f.UID)}}
	if m := f.Status.Migration; m != nil && m.Name != "" {
		selectors = append(selectors, client.MatchingFields{"involvedObject.kind": "VirtualMachineInstanceMigration", "involvedObject.name": m.Name})
	}
	selectors = append(selectors, client.MatchingFields{"involvedObject.kind": "VirtualMachineInstance", "involvedObject.name": f.Spec.Victim.Name})
	var out []corev1.Event
	seen := map[string]bool{}
	for i, sel := range selectors {
		var list corev1.EventList
		if err := c.List(ctx, &list, client.InNamespace(f.Namespace), sel); err != nil {
			return out, fmt.Errorf("list events: %w", err)
		}
		for _, e := range list.Items {
			if seen[string(e.UID)] {
				continue
			}
			if i == len(selectors)-1 && eventTimeOf(e).Before(f.Spec.FirstSeen.Add(-time.Minute)) {
				continue // the victim's history before the attack
			}
			seen[string(e.UID)] = true
			out = append(out, e)
		}
	}
	return out, nil
}

func eventTimeOf(e corev1.Event) time.Time {
	for _, t := range []time.Time{e.EventTime.Time, e.LastTimestamp.Time, e.FirstTimestamp.Time} {
		if !t.IsZero() {
			return t
		}
	}
	return e.CreationTimestamp.Time
}

// parseEvents reads Events saved by kubectl get events -o yaml (a List)
// or a single Event.
func parseEvents(data []byte) ([]corev1.Event, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("not YAML or JSON: %w", err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return nil, err
	}
	items := []unstructured.Unstructured{*u}
	if u.IsList() {
		list, err := u.ToList()
		if err != nil {
			return nil, err
		}
		items = list.Items
	}
	var out []corev1.Event
	for i, item := range items {
		if item.GetKind() != "Event" {
			return nil, fmt.Errorf("item %d is a %s, want an Event", i+1, item.GetKind())
		}
		var e corev1.Event
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(item.Object, &e); err != nil {
			return nil, fmt.Errorf("item %d: %w", i+1, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// relatedEvents keeps the Events about the finding, its migration and its
// victim.
func relatedEvents(f *v1alpha1.ThreatFinding, events []corev1.Event) []corev1.Event {
	names := []string{f.Name, f.Spec.Victim.Name}
	if m := f.Status.Migration; m != nil && m.Name != "" {
		names = append(names, m.Name)
	}
	var out []corev1.Event
	for _, e := range events {
		o := e.InvolvedObject
		if o.Namespace != "" && o.Namespace != f.Namespace {
			continue
		}
		if (f.UID != "" && o.UID == f.UID) || slices.Contains(names, o.Name) {
			out = append(out, e)
		}
	}
	return out
}
