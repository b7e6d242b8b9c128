package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/version"
	"github.com/sidewatch/sidewatch/node-agent/agent"
	"github.com/sidewatch/sidewatch/node-agent/capabilities"
	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/collect/perf"
	"github.com/sidewatch/sidewatch/node-agent/record"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

type recordFlags struct {
	commonFlags
	output       string
	duration     time.Duration
	interval     time.Duration
	events       []string
	sampled      []string
	samplePeriod uint64
	vmis         []string
	standIn      bool
}

// standIns are the software events that stand in for hardware counters
// with --stand-in, on machines without a PMU. They exercise the whole
// path (groups, rings, trace rows) but say nothing about caches.
var standIns = map[string]string{
	"task_clock":       "cycles",
	"context_switches": "llc_references",
	"page_faults":      "llc_misses",
	"cpu_migrations":   "l1d_misses",
}

func newRecordCommand(logger func() logr.Logger) *cobra.Command {
	f := &recordFlags{}
	cmd := &cobra.Command{
		Use:   "record",
		Short: "Count and sample the QEMU guests on this node and write a sidewatch trace (format v1) for `sidewatch analyze`",
		Long: `record finds the QEMU guests on this node from the proc tree (libvirt's
-name guest=<namespace>_<vmi>), opens the counters on every vCPU thread and
writes counter rows every interval and a sample row per overflow. It needs
no API server. Stop it with --duration or Ctrl-C; rows measured until then
are written.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRecord(cmd.Context(), logger(), f)
		},
	}
	f.bind(cmd)
	if f.node == "" {
		f.node, _ = os.Hostname()
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", "-", "trace file to write; - is standard output")
	fl.DurationVar(&f.duration, "duration", 0, "stop after this long (default: until interrupted)")
	fl.DurationVar(&f.interval, "interval", 100*time.Millisecond, "counter reading interval")
	fl.StringSliceVar(&f.events, "events", eventNames(v1alpha1.AllCounterEvents), "counter events to record")
	fl.StringSliceVar(&f.sampled, "sampled-events", []string{"llc_misses", "bus_locks"}, "events whose overflows are sampled (guest instruction pointers)")
	fl.Uint64Var(&f.samplePeriod, "sample-period", 10000, "events between two samples of a sampled event")
	fl.StringSliceVar(&f.vmis, "vmi", nil, "record only these guests: namespace/name, namespace/* or name (repeatable; default all)")
	fl.BoolVar(&f.standIn, "stand-in", false, "record software events in place of hardware counters (task_clock as cycles, context_switches as llc_references, page_faults as llc_misses, cpu_migrations as l1d_misses), for machines without a PMU; the trace says so")
	return cmd
}

func eventNames(evs []v1alpha1.CounterEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = string(e)
	}
	return out
}

func counterEvents(flag string, names []string) ([]v1alpha1.CounterEvent, error) {
	var out []v1alpha1.CounterEvent
	for _, n := range names {
		if _, ok := trace.CounterByName(n); !ok {
			return nil, fmt.Errorf("--%s: unknown event %q (known: %s)", flag, n, strings.Join(eventNames(v1alpha1.AllCounterEvents), ", "))
		}
		out = append(out, v1alpha1.CounterEvent(n))
	}
	return out, nil
}

func runRecord(ctx context.Context, log logr.Logger, f *recordFlags) error {
	if err := f.check(); err != nil {
		return err
	}
	if f.interval < 10*time.Millisecond || f.interval > 10*time.Second {
		return fmt.Errorf("--interval %v: must be between 10ms and 10s", f.interval)
	}
	if f.samplePeriod == 0 {
		return fmt.Errorf("--sample-period must be positive")
	}
	events, err := counterEvents("events", f.events)
	if err != nil {
		return err
	}
	sampled, err := counterEvents("sampled-events", f.sampled)
	if err != nil {
		return err
	}
	raiseLimits(log)
	caps, err := capabilities.Probe(capabilities.Options{Node: f.node, ProcRoot: f.procRoot, SysRoot: f.sysRoot})
	if err != nil {
		return err
	}
	meta := []record.Meta{
		{Key: trace.MetaCPU, Value: fmt.Sprintf("%s family %d model %d", caps.PMU.Vendor, caps.PMU.Family, caps.PMU.Model)},
		{Key: trace.MetaInterval, Value: f.interval.String()},
		{Key: "node", Value: f.node},
		{Key: "recorded_by", Value: "sidewatch-agent " + version.Version},
		{Key: "start", Value: time.Now().UTC().Format(time.RFC3339Nano)},
	}
	cfg := collect.Config{Interval: f.interval, SamplePeriod: f.samplePeriod, GuestOnly: true, BranchStack: caps.PMU.BranchStack}
	rename := map[string]string{}
	if f.standIn {
		for _, ev := range perf.Software() {
			to := standIns[ev.Name]
			if !containsEvent(events, to) {
				continue
			}
			ev.Sample = containsEvent(sampled, to)
			cfg.Events = append(cfg.Events, ev)
			rename[ev.Name] = to
		}
		var pairs []string
		for from, to := range rename {
			pairs = append(pairs, to+"="+from)
		}
		meta = append(meta,
			record.Meta{Key: "stand_in", Value: strings.Join(pairs, " ")},
			record.Meta{Key: "warning", Value: "software events recorded in place of hardware counters (no PMU); not evidence of cache or bus behaviour"})
	} else {
		var skipped []string
		cfg.Events, skipped = capabilities.EventsFor(caps, events, sampled)
		if len(cfg.Events) == 0 {
			return fmt.Errorf("nothing to record: %s (%s); on a machine without a PMU, --stand-in records software events in their place (testing only)",
				caps.Message, strings.Join(skipped, "; "))
		}
		for _, s := range skipped {
			log.Info("not recording", "event", s)
		}
	}
	for _, ev := range cfg.Events {
		if ev.Sample {
			name := ev.Name
			if to, ok := rename[name]; ok {
				name = to
			}
			meta = append(meta, record.Meta{Key: trace.MetaSamplePeriodPrefix + name, Value: strconv.FormatUint(f.samplePeriod, 10)})
		}
	}
	if len(cfg.Events) == 0 {
		return fmt.Errorf("--stand-in: none of --events %v has a software stand-in", f.events)
	}

	var out io.Writer = os.Stdout
	if f.output != "-" {
		file, err := os.Create(f.output)
		if err != nil {
			return fmt.Errorf("--output: %w", err)
		}
		defer file.Close()
		out = file
	}
	w, err := record.NewWriter(out, f.node, meta)
	if err != nil {
		return err
	}
	for from, to := range rename {
		w.Rename(from, to)
	}
	col := perf.New(log.WithName("perf"))
	st, err := agent.Record(ctx, agent.RecordOptions{
		Log: log, ProcRoot: f.procRoot, Collector: col, Config: cfg, VMIs: f.vmis, Writer: w, Duration: f.duration,
	})
	log.Info("recorded", "rows", st.Rows, "vmis", st.VMIs, "vcpus", st.VCPUs, "samples", st.Samples, "lost", st.Lost, "unavailable", st.Unavailable)
	if err != nil {
		return err
	}
	if st.VMIs == 0 {
		log.Info("no QEMU guest found in the proc tree", "procRoot", f.procRoot)
	}
	return nil
}

func containsEvent(evs []v1alpha1.CounterEvent, name string) bool {
	for _, e := range evs {
		if string(e) == name {
			return true
		}
	}
	return false
}
