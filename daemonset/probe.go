package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/version"
	"github.com/sidewatch/sidewatch/node-agent/capabilities"
)

func newProbeCommand(logger func() logr.Logger) *cobra.Command {
	f := &commonFlags{}
	var output string
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Print what this node can observe: PMU, events and their encodings, guest-only counting, branch stacks, privileges, descriptor budget",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.node == "" {
				f.node, _ = os.Hostname()
			}
			if err := f.check(); err != nil {
				return err
			}
			caps, err := capabilities.Probe(capabilities.Options{Node: f.node, AgentVersion: version.Version, ProcRoot: f.procRoot, SysRoot: f.sysRoot})
			if err != nil {
				return err
			}
			caps, kl, _, _ := withKernel(cmd.Context(), caps, f.sysRoot, logger())
			if kl != nil {
				defer kl.Close()
			}
			switch output {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(caps)
			case "text":
				return printCapabilities(cmd.OutOrStdout(), caps)
			}
			return fmt.Errorf("--output %q: want json or text", output)
		},
	}
	f.bind(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "json (the heartbeat's NodeCapabilities) or text")
	return cmd
}

func printCapabilities(w io.Writer, c v1alpha1.NodeCapabilities) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := "monitorable"
	if !c.Monitorable {
		state = "NOT monitorable (" + c.Reason + ")"
	}
	fmt.Fprintf(tw, "node\t%s: %s\n", c.Node, state)
	fmt.Fprintf(tw, "message\t%s\n", c.Message)
	p := c.PMU
	fmt.Fprintf(tw, "cpu\t%s family %d model %d stepping %d (%s), microcode %s\n", p.Vendor, p.Family, p.Model, p.Stepping, p.ModelName, p.Microcode)
	fmt.Fprintf(tw, "pmu\tpresent=%v guest-only counting=%v guest owns PMU=%v branch stack=%v\n", p.Present, p.GuestOnlyCounting, p.GuestOwnsPMU, p.BranchStack)
	if p.Reason != "" {
		fmt.Fprintf(tw, "\t%s\n", p.Reason)
	}
	fmt.Fprintf(tw, "perf_event_paranoid\t%d\n", c.PerfEventParanoid)
	fmt.Fprintf(tw, "capabilities\t%v\n", c.Capabilities)
	fmt.Fprintf(tw, "descriptors\t%d open of %d\n", c.FileDescriptors.Open, c.FileDescriptors.Limit)
	fmt.Fprintln(tw, "\nEVENT\tAVAILABLE\tENCODING\tPMU EVENT\tREASON")
	for _, e := range p.Events {
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\n", e.Event, e.Available, e.Encoding, e.PMUEventName, e.Reason)
	}
	fmt.Fprintln(tw, "\nEBPF PROGRAM\tLOADED\tREASON")
	for _, p := range c.EBPF {
		fmt.Fprintf(tw, "%s\t%v\t%s\n", p.Name, p.Loaded, p.Reason)
	}
	fmt.Fprintln(tw, "\nSIGNAL\tAVAILABLE\tSOURCE\tREASON")
	for _, s := range c.Signals {
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\n", s.Name, s.Available, s.Source, s.Reason)
	}
	return tw.Flush()
}
