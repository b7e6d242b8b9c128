package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sidewatch/sidewatch/node-agent/introspect"
)

// introspectFlags are the flags every introspect subcommand shares.
type introspectFlags struct {
	qmp       string
	memory    string
	pid       int
	systemMap string
	backend   string
	timeout   time.Duration
}

const introspectUsage = `Usage:
  sidewatch introspect --qmp SOCKET (--memory FILE | --pid QEMU_PID) COMMAND

Commands:
  ps                               guest processes: JSON [{"pid","ppid","comm"}]
  maps PID                         a guest process's memory map:
                                   JSON [{"start","end","perms","offset","path"}]
  resolve ADDR [--vcpu N] [--pid PID]
                                   a guest address: JSON {"pid","comm","path","offset","symbol"}
                                   (a user address needs the guest PID or the vCPU it ran on)

Flags before COMMAND:
  --qmp SOCKET          QEMU's QMP socket (required)
  --memory FILE         guest RAM: the shared memory backend file
  --pid QEMU_PID        guest RAM: read through /proc/QEMU_PID/mem (needs ptrace rights)
  --system-map FILE     kernel System.map, used when kallsyms is not found in guest memory
  --memory-backend ID   the RAM memory backend when the guest has several
  --timeout DURATION    give up after this long (default 1m0s)

Exit status 0 on success; otherwise 1 with a one-line reason on stderr.
`

func newIntrospectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "introspect --qmp SOCKET (--memory FILE | --pid QEMU_PID) COMMAND",
		Short: "Read a running guest's processes, memory maps and code addresses from the host",
		Long: `introspect reads a QEMU guest's memory from the host, read-only and without
an agent in the guest: it finds the guest kernel (KASLR included), its types
(BTF) and symbols (kallsyms) in guest memory, walks the task list and memory
maps, and resolves guest addresses to process, file, offset and symbol.

` + introspectUsage,
		Example: `  sidewatch introspect --qmp /run/qmp.sock --memory /dev/shm/guest-ram ps
  sidewatch introspect --qmp /run/qmp.sock --pid 4242 maps 92
  sidewatch introspect --qmp /run/qmp.sock --pid 4242 resolve 0x7f5f8c3e01b4 --pid 92
  sidewatch introspect --qmp /run/qmp.sock --pid 4242 resolve 0xffffffff81e9f6ae --vcpu 1`,
		// --pid means the QEMU process before COMMAND and the guest
		// process after "resolve ADDR", so flags are parsed here in two
		// stages rather than by cobra.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runIntrospect(cmd, args)
		},
	}
}

func runIntrospect(cmd *cobra.Command, args []string) error {
	f := &introspectFlags{}
	global := pflag.NewFlagSet("introspect", pflag.ContinueOnError)
	global.SetInterspersed(false)
	global.SetOutput(io.Discard)
	global.StringVar(&f.qmp, "qmp", "", "")
	global.StringVar(&f.memory, "memory", "", "")
	global.IntVar(&f.pid, "pid", 0, "")
	global.StringVar(&f.systemMap, "system-map", "", "")
	global.StringVar(&f.backend, "memory-backend", "", "")
	global.DurationVar(&f.timeout, "timeout", time.Minute, "")
	help := global.BoolP("help", "h", false, "")
	if err := global.Parse(args); err != nil {
		return fmt.Errorf("introspect: %w (see --help)", err)
	}
	rest := global.Args()
	if *help || (len(rest) > 0 && rest[0] == "help") {
		_, err := fmt.Fprint(cmd.OutOrStdout(), introspectUsage)
		return err
	}
	if len(rest) == 0 {
		return errors.New("introspect: COMMAND missing: ps, maps PID or resolve ADDR (see --help)")
	}
	switch rest[0] {
	case "ps":
		if len(rest) != 1 {
			return errors.New("introspect ps: takes no arguments")
		}
		return f.run(cmd, introspectPS)
	case "maps":
		if len(rest) != 2 {
			return errors.New("introspect maps: want exactly one PID")
		}
		pid, err := strconv.Atoi(rest[1])
		if err != nil || pid <= 0 {
			return fmt.Errorf("introspect maps: PID %q is not a guest process id", rest[1])
		}
		return f.run(cmd, func(ctx context.Context, g *introspect.Guest) (any, error) {
			return g.Maps(ctx, pid)
		})
	case "resolve":
		return introspectResolve(cmd, f, rest[1:])
	default:
		return fmt.Errorf("introspect: unknown command %q: want ps, maps or resolve", rest[0])
	}
}

// oneLine makes a multi-line error (joined errors) fit the one-line reason
// the CLI promises.
type oneLine struct{ err error }

func (e oneLine) Error() string {
	return strings.Join(strings.Fields(strings.ReplaceAll(e.err.Error(), "\n", "; ")), " ")
}
func (e oneLine) Unwrap() error { return e.err }

func (f *introspectFlags) open(ctx context.Context) (*introspect.Guest, error) {
	switch {
	case f.qmp == "":
		return nil, errors.New("introspect: --qmp SOCKET is required")
	case f.memory == "" && f.pid == 0:
		return nil, errors.New("introspect: give --memory FILE (shared memory backend) or --pid QEMU_PID")
	case f.memory != "" && f.pid != 0:
		return nil, errors.New("introspect: give only one of --memory and --pid")
	}
	src := introspect.Source{QMPSocket: f.qmp, MemoryFile: f.memory, PID: f.pid, MemoryBackend: f.backend}
	if f.systemMap != "" {
		file, err := os.Open(f.systemMap)
		if err != nil {
			return nil, fmt.Errorf("introspect: --system-map: %w", err)
		}
		defer file.Close()
		if src.SystemMap, err = introspect.ParseSystemMap(file); err != nil {
			return nil, fmt.Errorf("introspect: --system-map %s: %w", f.systemMap, err)
		}
	}
	return introspect.Open(ctx, src, introspect.Options{})
}

// run opens the guest, runs fn and prints its result as JSON.
func (f *introspectFlags) run(cmd *cobra.Command, fn func(ctx context.Context, g *introspect.Guest) (any, error)) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	defer cancel()
	g, err := f.open(ctx)
	if err != nil {
		return oneLine{err}
	}
	defer g.Close()
	out, err := fn(ctx, g)
	if err != nil {
		return oneLine{err}
	}
	return writeJSON(cmd.OutOrStdout(), out)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

type psEntry struct {
	PID  int    `json:"pid"`
	PPID int    `json:"ppid"`
	Comm string `json:"comm"`
}

func introspectPS(ctx context.Context, g *introspect.Guest) (any, error) {
	procs, err := g.Processes(ctx)
	if err != nil && len(procs) == 0 {
		return nil, err
	}
	out := make([]psEntry, len(procs))
	for i, p := range procs {
		out[i] = psEntry{PID: p.PID, PPID: p.PPID, Comm: p.Comm}
	}
	return out, nil
}

type resolveOutput struct {
	PID    int    `json:"pid"`
	Comm   string `json:"comm"`
	Path   string `json:"path"`
	Offset string `json:"offset"`
	Symbol string `json:"symbol"`
}

func introspectResolve(cmd *cobra.Command, f *introspectFlags, args []string) error {
	fs := pflag.NewFlagSet("resolve", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	vcpu := fs.Int("vcpu", -1, "")
	pid := fs.Int("pid", 0, "")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("introspect resolve: %w", err)
	}
	if fs.NArg() != 1 {
		return errors.New("introspect resolve: want exactly one ADDR")
	}
	addr, err := introspect.ParseAddress(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("introspect resolve: ADDR: %w", err)
	}
	if *pid < 0 || *vcpu < -1 {
		return errors.New("introspect resolve: --pid and --vcpu must not be negative")
	}
	return f.run(cmd, func(ctx context.Context, g *introspect.Guest) (any, error) {
		a, err := g.Resolve(ctx, introspect.Query{Address: addr, VCPU: *vcpu, PID: *pid})
		if err != nil {
			return nil, err
		}
		return resolveOutput{PID: a.PID, Comm: a.Comm, Path: a.Path, Offset: fmt.Sprintf("%#x", a.Offset), Symbol: a.SymbolString()}, nil
	})
}
