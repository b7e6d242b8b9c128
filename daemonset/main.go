// Command sidewatch-agent is the sidewatch node agent, run as a DaemonSet
// on every KubeVirt node:
//
//	sidewatch-agent run      watch the VMIs on this node, detect, report
//	sidewatch-agent record   write what the collectors measure as a trace
//	sidewatch-agent probe    print what this node can observe
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/sidewatch/sidewatch/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sidewatch-agent:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	zapOpts := &zap.Options{}
	root := &cobra.Command{
		Use:           "sidewatch-agent",
		Short:         "The sidewatch node agent: finds cross-VM side-channel attacks on the VMIs of its node",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	goflags := flag.NewFlagSet("zap", flag.ContinueOnError)
	zapOpts.BindFlags(goflags)
	root.PersistentFlags().AddGoFlagSet(goflags)
	// controller-runtime's own packages (the informers' reflectors) log
	// through its global logger: give it the agent's.
	logger := func() logr.Logger {
		l := zap.New(zap.UseFlagOptions(zapOpts))
		ctrllog.SetLogger(l)
		return l
	}
	root.AddCommand(newRunCommand(logger), newRecordCommand(logger), newProbeCommand(logger))
	return root
}

// commonFlags are the node-level settings every subcommand shares.
type commonFlags struct {
	node     string
	procRoot string
	sysRoot  string
}

func (c *commonFlags) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.node, "node-name", os.Getenv("NODE_NAME"), "this node's name (default: $NODE_NAME, set from the downward API's spec.nodeName)")
	cmd.Flags().StringVar(&c.procRoot, "proc-root", "/host/proc", "the host's /proc, mounted into the agent's container (hostPID)")
	cmd.Flags().StringVar(&c.sysRoot, "sys-root", "/host/sys", "the host's /sys (PMU devices)")
}

func (c *commonFlags) check() error {
	if c.node == "" {
		return fmt.Errorf("--node-name is empty: set NODE_NAME from the downward API (fieldRef spec.nodeName) or pass --node-name")
	}
	if st, err := os.Stat(c.procRoot); err != nil || !st.IsDir() {
		return fmt.Errorf("--proc-root %s is not a directory: mount the host's /proc there (hostPath /proc) or pass --proc-root /proc", c.procRoot)
	}
	return nil
}

// raiseLimits lifts the descriptor limit to its hard maximum (one perf
// event per counter per vCPU) and the locked-memory limit (perf rings and
// eBPF maps count against it) as far as the agent's privileges allow.
func raiseLimits(log logr.Logger) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			log.Info("could not raise RLIMIT_NOFILE", "err", err.Error())
		}
	}
	inf := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &inf); err != nil {
		log.V(1).Info("could not lift RLIMIT_MEMLOCK (needs CAP_SYS_RESOURCE); perf rings shrink to fit", "err", err.Error())
	}
}
