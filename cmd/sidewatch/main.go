// Command sidewatch is the user CLI: it analyzes traces, generates test
// scenarios, learns profiles, renders incident reports and exports findings.
// Installed as kubectl-sidewatch it also works as `kubectl sidewatch`.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sidewatch/sidewatch/internal/version"
)

func newRootCommand() *cobra.Command {
	name := "sidewatch"
	if strings.HasPrefix(filepath.Base(os.Args[0]), "kubectl-") {
		name = "kubectl sidewatch"
	}
	root := &cobra.Command{
		Use:           name,
		Short:         "Find cross-VM side-channel attacks on KubeVirt and respond to them",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), version.Version)
			return err
		},
	})
	root.AddCommand(newExportCommand())
	root.AddCommand(newReportCommand())
	root.AddCommand(newIntrospectCommand())
	return root
}

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "sidewatch:", err)
		os.Exit(1)
	}
}
