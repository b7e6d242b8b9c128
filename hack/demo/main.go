// Command demo shows sidewatch detect an attack and migrate the victim, on
// an embedded local control plane: `make demo`. See internal/demo for what
// runs. Ctrl-C stops everything and removes what the demo created.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sidewatch/sidewatch/internal/demo"
)

func main() {
	var (
		workDir   string
		exitAfter time.Duration
		timeout   time.Duration
		speed     float64
	)
	flag.StringVar(&workDir, "workdir", "", "keep the demo's files (binaries, kubeconfigs, logs, trace, report) here instead of a temporary directory")
	flag.DurationVar(&exitAfter, "exit-after", 0, "once the victim is mitigated, stop after this long instead of waiting for Ctrl-C")
	flag.DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the finding to be mitigated")
	flag.Float64Var(&speed, "replay-speed", 1, "pace of the recorded attack relative to real time")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, workDir, exitAfter, timeout, speed); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, workDir string, exitAfter, timeout time.Duration, speed float64) error {
	d, err := demo.Start(ctx, demo.Options{WorkDir: workDir, ReplaySpeed: speed})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("==> stopping the agent, the operator and the control plane")
		d.Stop()
	}()

	fmt.Println("==> waiting for the agent to see the attack and the operator to move the victim")
	res, err := d.WaitMitigated(ctx, timeout)
	if err != nil {
		return err
	}
	fmt.Printf("\n==> %s moved from %s to %s, %.0fs after the agent started replaying the attack\n", demo.Victim, res.VictimBefore, res.VictimAfter, res.Elapsed.Seconds())

	html := filepath.Join(d.WorkDir(), "incident-report.html")
	fmt.Printf("\n$ sidewatch report -n %s %s --html %s\n", res.Finding.Namespace, res.Finding.Name, html)
	report := exec.CommandContext(ctx, d.CLI, "report", "--kubeconfig", d.Kubeconfig, "-n", res.Finding.Namespace, res.Finding.Name, "--html", html)
	report.Stdout, report.Stderr = os.Stdout, os.Stderr
	if err := report.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo: sidewatch report:", err)
	}

	fmt.Printf("\nThe cluster keeps running. In another terminal:\n")
	fmt.Printf("  export KUBECONFIG=%s\n", d.Kubeconfig)
	fmt.Printf("  %s get threatfindings -A -o wide\n", d.Kubectl)
	fmt.Printf("  %s get scp protect-payments -o yaml\n", d.Kubectl)
	fmt.Printf("  %s export --stix\n", d.CLI)
	fmt.Printf("  curl -s http://%s/metrics | grep ^sidewatch_   # the operator\n", d.OperatorMetrics)
	fmt.Printf("  curl -s http://%s/metrics | grep ^sidewatch_   # the agent\n", d.AgentMetrics)
	if workDir == "" {
		fmt.Println("  (the incident report and logs are in", d.WorkDir(), "until the demo stops; --workdir keeps them)")
	}
	if exitAfter > 0 {
		fmt.Printf("==> stopping in %s\n", exitAfter)
		select {
		case <-ctx.Done():
		case <-time.After(exitAfter):
		}
		return nil
	}
	fmt.Println("==> press Ctrl-C to stop and clean up")
	<-ctx.Done()
	return nil
}
