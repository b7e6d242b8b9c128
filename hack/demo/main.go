// Command demo runs sidewatch on an embedded local control plane: a real
// kube-apiserver and etcd (built once by hack/control-plane.sh) with the
// sidewatch and KubeVirt CRDs installed. It applies the example policy and
// shows what `kubectl get scp,threatfindings` prints, then waits for Ctrl-C
// and cleans everything up.
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

	"github.com/sidewatch/sidewatch/internal/controlplane"
)

func main() {
	var (
		exitAfter time.Duration
		workDir   string
	)
	flag.DurationVar(&exitAfter, "exit-after", 0, "stop on its own after this long (0: wait for Ctrl-C)")
	flag.StringVar(&workDir, "workdir", "", "where the demo's kubeconfig is written (default: a temporary directory)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, exitAfter, workDir); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, exitAfter time.Duration, workDir string) error {
	say("starting a local control plane (kube-apiserver + etcd); the first run builds them, about 5 minutes")
	env, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping the control plane")
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: stop:", err)
		}
	}()

	if workDir == "" {
		if workDir, err = os.MkdirTemp("", "sidewatch-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(workDir)
	} else if err := os.MkdirAll(workDir, 0o755); err != nil {
		return err
	}
	kubeconfig := filepath.Join(workDir, "kubeconfig")
	if err := env.Kubeconfig(kubeconfig); err != nil {
		return err
	}
	root, err := controlplane.RepoRoot()
	if err != nil {
		return err
	}
	kubectl := func(args ...string) error {
		fmt.Printf("\n$ kubectl %s\n", join(args))
		cmd := exec.CommandContext(ctx, env.Kubectl(), append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		return cmd.Run()
	}

	policy := filepath.Join(root, "config", "samples", "sidewatch_v1alpha1_sidechannelpolicy.yaml")
	steps := [][]string{
		{"apply", "-f", policy},
		{"get", "scp", "protect-payments", "-o", "yaml"},
		{"get", "scp"},
		{"get", "threatfindings", "-A"},
	}
	for _, s := range steps {
		if err := kubectl(s...); err != nil {
			return fmt.Errorf("kubectl %s: %w", join(s), err)
		}
	}

	fmt.Printf("\nThe control plane keeps running. In another terminal:\n  export KUBECONFIG=%s\n  %s get scp,threatfindings -A\n", kubeconfig, env.Kubectl())
	var timeout <-chan time.Time
	if exitAfter > 0 {
		timeout = time.After(exitAfter)
		say(fmt.Sprintf("stopping in %s", exitAfter))
	} else {
		say("press Ctrl-C to stop and clean up")
	}
	select {
	case <-ctx.Done():
	case <-timeout:
	}
	return nil
}

func say(msg string) { fmt.Printf("==> %s\n", msg) }

func join(args []string) string {
	out := ""
	for i, a := range args {
		if i > 0 {
			out += " "
		}
		out += a
	}
	return out
}
