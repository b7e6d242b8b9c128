package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sidewatch/sidewatch/node-agent/tracegen"
)

func newTracegenCommand() *cobra.Command {
	var (
		attack, coding, neighbours, protect, out, grid, outDir string
		period, onset, duration, interval                      time.Duration
		duty, txDuty, rate, factor                             float64
		seed                                                   uint64
		samplePeriod, lockSamplePeriod                         int64
	)
	cmd := &cobra.Command{
		Use:   "tracegen",
		Short: "Generate labelled traces: covert channels, cache attacks and hard benign neighbours",
		Long: `tracegen writes a sidewatch trace (docs/trace-format.md) of one simulated node:
an attack (--attack) among benign neighbours (--neighbours), with counter noise
and co-runner interference. The trace carries its ground truth as a
"# truth: {...}" metadata line. With --grid it writes every scenario of an
evaluation grid into --out-dir instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if grid != "" {
				if outDir == "" {
					return errors.New("--grid needs --out-dir")
				}
				return writeGrid(cmd, tracegen.Scale(grid), seed, outDir)
			}
			sc := tracegen.Scenario{
				Name: "custom", Seed: seed, Duration: duration, Interval: interval,
				SamplePeriod: samplePeriod, LockSamplePeriod: lockSamplePeriod,
			}
			for i, k := range strings.Split(neighbours, ",") {
				k = strings.TrimSpace(k)
				if k == "" {
					continue
				}
				if !validKind(tracegen.Kind(k)) {
					return fmt.Errorf("--neighbours: unknown workload %q (known: %s)", k, kindList())
				}
				sc.VMIs = append(sc.VMIs, tracegen.VMI{Namespace: fmt.Sprintf("tenant-%c", 'b'+i%24), Name: fmt.Sprintf("%s-%d", k, i), VCPUs: 2, Kind: tracegen.Kind(k)})
			}
			switch tracegen.AttackKind(attack) {
			case "", "none":
			case tracegen.CacheCovert, tracegen.BusLockCovert, tracegen.PrimeProbe, tracegen.FlushReload:
				c := tracegen.Coding(coding)
				switch c {
				case tracegen.NRZ, tracegen.RZ, tracegen.Manchester, tracegen.Alternating:
				default:
					return fmt.Errorf("--coding %q: want nrz, rz, manchester or alternating", coding)
				}
				if onset >= duration {
					return fmt.Errorf("--onset %v must be before the end of the trace (--duration %v)", onset, duration)
				}
				sc.Attack = &tracegen.Attack{Kind: tracegen.AttackKind(attack), Period: period, Coding: c, Duty: duty,
					TxDuty: txDuty, Rate: rate, Factor: factor, Onset: onset, Protect: protect}
				if sc.Attack.Rate == 0 {
					sc.Attack.Rate = 8e6
					if sc.Attack.Kind == tracegen.BusLockCovert {
						sc.Attack.Rate = 4e5
					}
				}
				if sc.Attack.Factor == 0 {
					sc.Attack.Factor = 2.5
					if sc.Attack.Kind == tracegen.FlushReload {
						sc.Attack.Factor = 0.4
					}
				}
				sc.Name = attack
			default:
				return fmt.Errorf("--attack %q: want none, cache-covert, buslock-covert, prime-probe or flush-reload", attack)
			}
			var w io.Writer = cmd.OutOrStdout()
			if out != "" && out != "-" {
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			_, err := tracegen.Generate(w, sc)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&attack, "attack", "none", "none, cache-covert, buslock-covert, prime-probe or flush-reload")
	f.DurationVar(&period, "period", 50*time.Millisecond, "covert channel bit period")
	f.StringVar(&coding, "coding", "nrz", "covert channel coding: nrz, rz, manchester, alternating")
	f.Float64Var(&duty, "duty", 0.5, "active share of a slot for rz coding")
	f.Float64Var(&txDuty, "tx-duty", 1, "share of time the channel transmits")
	f.Float64Var(&rate, "rate", 0, "sender LLC misses (or bus locks) per second while active (default 8e6, 4e5 for bus locks)")
	f.Float64Var(&factor, "factor", 0, "side-channel attacker's miss factor during the victim's crypto (default 2.5, 0.4 for flush-reload)")
	f.DurationVar(&onset, "onset", 90*time.Second, "when the attack starts")
	f.DurationVar(&duration, "duration", 4*time.Minute, "trace length")
	f.DurationVar(&interval, "interval", 100*time.Millisecond, "counter read interval")
	f.StringVar(&neighbours, "neighbours", "compiler,database,video-encoder", "comma-separated benign workloads: "+kindList())
	f.StringVar(&protect, "protect", "sender", "protected end of a covert channel: sender, receiver or both")
	f.Uint64Var(&seed, "seed", 1, "random seed")
	f.Int64Var(&samplePeriod, "sample-period", 10000, "llc_misses sample period (0: no samples)")
	f.Int64Var(&lockSamplePeriod, "lock-sample-period", 10000, "bus_locks sample period (0: no samples)")
	f.StringVarP(&out, "output", "o", "-", "output file")
	f.StringVar(&grid, "grid", "", "write an evaluation grid (quick or full) instead of one trace")
	f.StringVar(&outDir, "out-dir", "", "directory for --grid")
	return cmd
}

func validKind(k tracegen.Kind) bool {
	for _, x := range append(tracegen.BenignKinds, tracegen.RequestCoupled) {
		if x == k {
			return true
		}
	}
	return false
}

func kindList() string {
	var s []string
	for _, k := range append(tracegen.BenignKinds, tracegen.RequestCoupled) {
		s = append(s, string(k))
	}
	return strings.Join(s, ", ")
}

func writeGrid(cmd *cobra.Command, scale tracegen.Scale, seed uint64, dir string) error {
	if scale != tracegen.Quick && scale != tracegen.Full {
		return fmt.Errorf("--grid %q: want quick or full", scale)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, sc := range tracegen.Grid(scale, seed) {
		name := filepath.Join(dir, strings.NewReplacer("/", "_").Replace(sc.Name)+".csv")
		f, err := os.Create(name)
		if err != nil {
			return err
		}
		_, err = tracegen.Generate(f, sc)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", sc.Name, err)
		}
		fmt.Fprintln(cmd.OutOrStdout(), name)
	}
	return nil
}
