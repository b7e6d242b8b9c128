package main

import (
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/evaluate"
	"github.com/sidewatch/sidewatch/node-agent/tracegen"
)

func newEvaluateCommand() *cobra.Command {
	var (
		scale, out, policyPath, only string
		seed                         uint64
		parallel                     int
	)
	cmd := &cobra.Command{
		Use:   "evaluate",
		Short: "Measure detection accuracy on a grid of generated scenarios and write the report",
		Long: `evaluate generates every scenario of a tracegen grid, replays each through the
detection engine (the path of sidewatch analyze) and scores the detections
against the scenario's ground truth: true-positive rate and latency per
attack family, false findings per VMI-hour on benign nodes. The Markdown
report goes to --out (docs/detection-accuracy.md in the repository).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s := tracegen.Scale(scale)
			if s != tracegen.Quick && s != tracegen.Full {
				return fmt.Errorf("--scale %q: want quick or full", scale)
			}
			cfg := detect.DefaultConfig()
			if policyPath != "" {
				pol, err := loadPolicy(policyPath)
				if err != nil {
					return err
				}
				cfg = detect.ConfigFromPolicy(pol.Spec)
			}
			scenarios := tracegen.Grid(s, seed)
			if only != "" {
				re, err := regexp.Compile(only)
				if err != nil {
					return fmt.Errorf("--only %q: %w", only, err)
				}
				scenarios = slices.DeleteFunc(scenarios, func(sc tracegen.Scenario) bool { return !re.MatchString(sc.Name) })
				if len(scenarios) == 0 {
					return fmt.Errorf("--only %q matches no scenario of the %s grid", only, scale)
				}
			}
			start := time.Now()
			done := 0
			results := evaluate.Run(cmd.Context(), scenarios, cfg, parallel, func(r evaluate.Result) {
				done++
				status := "ok"
				switch {
				case r.Err != nil:
					status = "error: " + r.Err.Error()
				case r.Attack && !r.Detected:
					status = "MISSED"
				case len(r.False) > 0:
					status = fmt.Sprintf("%d false", len(r.False))
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "[%d/%d] %s: %s (%v)\n", done, len(scenarios), r.Scenario, status, r.Elapsed.Round(time.Millisecond))
			})
			for _, r := range results {
				if r.Err != nil {
					return fmt.Errorf("scenario %s: %w", r.Scenario, r.Err)
				}
			}
			command := fmt.Sprintf("sidewatch evaluate --scale %s --seed %d", scale, seed)
			if only != "" {
				command += fmt.Sprintf(" --only '%s'", only)
			}
			report := evaluate.Render(results, command, cfg.CacheOscillation.Window.Nanoseconds(), time.Since(start))
			if out == "" || out == "-" {
				_, err := fmt.Fprint(cmd.OutOrStdout(), report)
				return err
			}
			return os.WriteFile(out, []byte(report), 0o644)
		},
	}
	f := cmd.Flags()
	f.StringVar(&scale, "scale", "full", "grid size: quick or full")
	f.Uint64Var(&seed, "seed", 7, "grid seed")
	f.StringVarP(&out, "out", "o", "-", "report file (- for standard output)")
	f.StringVar(&policyPath, "policy", "", "SideChannelPolicy YAML whose detector settings to evaluate (default: the CRD defaults)")
	f.StringVar(&only, "only", "", "evaluate only the scenarios whose name matches this regular expression (the report then covers only those)")
	f.IntVar(&parallel, "parallel", runtime.GOMAXPROCS(0), "scenarios evaluated at once")
	return cmd
}
