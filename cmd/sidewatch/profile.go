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
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sidewatch/sidewatch/node-agent/detect"
)

func newProfileCommand() *cobra.Command {
	var (
		tracePath, vmiRef, name, out, configMap, namespace string
		libraries, symbols, during                         []string
		all                                                bool
		interval                                           time.Duration
	)
	cmd := &cobra.Command{
		Use:   "profile --trace FILE --vmi NAMESPACE/NAME",
		Short: "Learn a counter profile of a VMI's sensitive code from a trace",
		Long: `profile learns the counter signature of sensitive code (profile.json) from a
trace of a VMI running it. Intervals are labelled sensitive by where their
samples fall (--library/--symbol, resolved with the trace's guest_region
lines; the common crypto libraries by default), by time (--during, relative to
the VMI's first row), or all of them (--all, for a trace recorded while only
the sensitive workload ran). The profile goes into a ConfigMap's
"profile.json" key, named by a policy signature's profileConfigMap; with
--configmap the command prints that ConfigMap.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tracePath == "" || vmiRef == "" {
				return errors.New("--trace and --vmi are required")
			}
			ref, err := parseRef(vmiRef)
			if err != nil {
				return fmt.Errorf("--vmi: %w", err)
			}
			modes := 0
			if all {
				modes++
			}
			if len(during) > 0 {
				modes++
			}
			if modes > 1 {
				return errors.New("use one of --all and --during")
			}
			type span struct{ from, to time.Duration }
			var spans []span
			for _, d := range during {
				a, b, ok := strings.Cut(d, "-")
				from, err1 := time.ParseDuration(a)
				to, err2 := time.ParseDuration(b)
				if !ok || err1 != nil || err2 != nil || to <= from {
					return fmt.Errorf("--during %q: want START-END as durations from the VMI's first row, e.g. 30s-90s", d)
				}
				spans = append(spans, span{from, to})
			}
			sig := detect.BuiltinCryptoSignature()
			if len(libraries) > 0 || len(symbols) > 0 {
				sig = detect.Signature{Name: "custom", Libraries: libraries, Symbols: symbols}
			}
			f, err := os.Open(tracePath)
			if err != nil {
				return err
			}
			defer f.Close()
			iv, err := detect.ReadIntervals(f, ref, interval.Nanoseconds(), []detect.Signature{sig}, 10_000_000)
			if err != nil {
				return fmt.Errorf("%s: %w", tracePath, err)
			}
			labels := make([]bool, len(iv.Counters))
			how := ""
			for i := range labels {
				at := time.Duration(int64(i) * iv.IntervalNS)
				switch {
				case all:
					labels[i] = true
					how = "all intervals"
				case len(spans) > 0:
					for _, s := range spans {
						if at >= s.from && at < s.to {
							labels[i] = true
						}
					}
					how = "--during " + strings.Join(during, ",")
				default:
					labels[i] = iv.Sensitive[i] > 0 && float64(iv.Sensitive[i]) >= 0.2*float64(iv.Samples[i])
					how = fmt.Sprintf("samples in %v %v", sig.Libraries, sig.Symbols)
				}
			}
			if name == "" {
				name = ref.Name
			}
			p, err := detect.LearnProfile(name, iv.Counters, labels)
			if err != nil {
				return fmt.Errorf("%s, %s labelled by %s: %w", tracePath, ref, how, err)
			}
			p.IntervalNS = iv.IntervalNS
			p.Training.Trace = tracePath
			p.Training.VMI = ref.String()
			p.Training.Labels = how
			data, err := json.MarshalIndent(p, "", "  ")
			if err != nil {
				return err
			}
			data = append(data, '\n')
			if configMap != "" {
				cm := corev1.ConfigMap{
					TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
					ObjectMeta: metav1.ObjectMeta{Name: configMap, Namespace: namespace},
					Data:       map[string]string{"profile.json": string(data)},
				}
				if data, err = yaml.Marshal(cm); err != nil {
					return err
				}
			}
			var w io.Writer = cmd.OutOrStdout()
			if out != "" && out != "-" {
				file, err := os.Create(out)
				if err != nil {
					return err
				}
				defer file.Close()
				w = file
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "profile %s: %d intervals, %d sensitive (%s); on its own training data it matches %.0f%% of sensitive and %.1f%% of other intervals\n",
				name, p.Training.Intervals, p.Training.SensitiveIntervals, how, 100*p.Training.TruePositiveRate, 100*p.Training.FalsePositiveRate)
			_, err = w.Write(data)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&tracePath, "trace", "", "trace file")
	fl.StringVar(&vmiRef, "vmi", "", "namespace/name of the VMI running the sensitive code")
	fl.StringVar(&name, "name", "", "profile name (default: the VMI's name)")
	fl.StringArrayVar(&libraries, "library", nil, "library whose samples mark sensitive intervals (repeatable; default: the common crypto libraries)")
	fl.StringArrayVar(&symbols, "symbol", nil, "symbol whose samples mark sensitive intervals (repeatable)")
	fl.StringArrayVar(&during, "during", nil, "START-END span of sensitive code, as durations from the VMI's first row (repeatable)")
	fl.BoolVar(&all, "all", false, "every interval is sensitive")
	fl.DurationVar(&interval, "interval", 0, "interval to learn at (default: the trace's)")
	fl.StringVarP(&out, "output", "o", "-", "output file")
	fl.StringVar(&configMap, "configmap", "", "print a ConfigMap of this name holding profile.json instead of the bare JSON")
	fl.StringVar(&namespace, "namespace", "sidewatch-system", "namespace of --configmap (the operator's)")
	return cmd
}
