package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/internal/guest"
	"github.com/sidewatch/sidewatch/node-agent/introspect"
)

// runCLI runs the sidewatch CLI in-process and returns stdout and the error.
func runIntrospectCLI(args ...string) (string, error) {
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestIntrospectUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"introspect", "ps"}, "--qmp SOCKET is required"},
		{[]string{"introspect", "--qmp", "/nonexistent", "ps"}, "--memory FILE"},
		{[]string{"introspect", "--qmp", "/x", "--memory", "/y", "--pid", "3", "ps"}, "only one of --memory and --pid"},
		{[]string{"introspect", "--qmp", "/x", "--memory", "/y"}, "COMMAND missing"},
		{[]string{"introspect", "--qmp", "/x", "--memory", "/y", "top"}, `unknown command "top"`},
		{[]string{"introspect", "--qmp", "/x", "--memory", "/y", "maps"}, "exactly one PID"},
		{[]string{"introspect", "--qmp", "/x", "--memory", "/y", "maps", "abc"}, `PID "abc"`},
		{[]string{"introspect", "--qmp", "/x", "--memory", "/y", "resolve", "0xzz"}, "ADDR"},
		{[]string{"introspect", "--qmp", "/x", "--memory", "/y", "resolve"}, "exactly one ADDR"},
		{[]string{"introspect", "--bogus", "ps"}, "unknown flag"},
		{[]string{"introspect", "--qmp", "/nonexistent.sock", "--memory", "/y", "ps"}, "qmp: connect"},
	} {
		t.Run(strings.Join(tc.args[1:], " "), func(t *testing.T) {
			_, err := runIntrospectCLI(tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
	out, err := runIntrospectCLI("introspect", "--help")
	if err != nil || !strings.Contains(out, "resolve ADDR [--vcpu N] [--pid PID]") {
		t.Errorf("--help: %v\n%s", err, out)
	}
}

// TestIntrospectCLI runs the three commands against a real guest.
func TestIntrospectCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a QEMU guest")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	g, err := guest.Start(ctx, guest.Config{Namespace: "cli", Name: "introspect", Boot: guest.BootBzImage})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	victim := g.Truth.VictimPID
	for _, ram := range [][]string{{"--memory", g.MemoryFile}, {"--pid", fmt.Sprint(g.PID)}} {
		base := append([]string{"introspect", "--qmp", g.QMPSocket}, ram...)
		t.Run(ram[0], func(t *testing.T) {
			out, err := runIntrospectCLI(append(base, "ps")...)
			if err != nil {
				t.Fatal(err)
			}
			var ps []map[string]any
			if err := json.Unmarshal([]byte(out), &ps); err != nil {
				t.Fatalf("ps output: %v\n%s", err, out)
			}
			found := false
			for _, p := range ps {
				if len(p) != 3 {
					t.Errorf("ps entry %v: want exactly pid, ppid, comm", p)
				}
				if p["pid"] == float64(victim) && p["comm"] == "victim" && p["ppid"] == float64(1) {
					found = true
				}
			}
			if !found {
				t.Errorf("ps lacks the victim (pid %d):\n%s", victim, out)
			}

			out, err = runIntrospectCLI(append(base, "maps", fmt.Sprint(victim))...)
			if err != nil {
				t.Fatal(err)
			}
			var raw []map[string]string
			if err := json.Unmarshal([]byte(out), &raw); err != nil {
				t.Fatalf("maps output: %v\n%s", err, out)
			}
			var maps []introspect.Mapping
			if err := json.Unmarshal([]byte(out), &maps); err != nil {
				t.Fatal(err)
			}
			if len(maps) != len(g.Truth.VictimMaps) || len(raw) != len(maps) {
				t.Fatalf("maps: %d lines, want %d:\n%s", len(maps), len(g.Truth.VictimMaps), out)
			}
			var lib *introspect.Mapping
			for i, m := range maps {
				w := g.Truth.VictimMaps[i]
				if m.Start != w.Start || m.End != w.End || m.Perms != w.Perms || m.Offset != w.Offset || m.Path != w.Path {
					t.Errorf("maps line %d: got %+v want %+v", i, m, w)
				}
				if !strings.HasPrefix(raw[i]["start"], "0x") || len(raw[i]) != 5 {
					t.Errorf("maps line %d: %v: want 5 keys with 0x hex addresses", i, raw[i])
				}
				if m.Path == "/lib/libvictim.so" && m.Perms == "r-xp" {
					lib = &maps[i]
				}
			}
			if lib == nil {
				t.Fatal("no executable libvictim.so mapping")
			}
			// The start of the library's text mapping resolves to the file
			// offset of that mapping.
			out, err = runIntrospectCLI(append(base, "resolve", fmt.Sprintf("%#x", lib.Start+0x10), "--pid", fmt.Sprint(victim))...)
			if err != nil {
				t.Fatal(err)
			}
			var res map[string]any
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatal(err)
			}
			if len(res) != 5 || res["pid"] != float64(victim) || res["comm"] != "victim" || res["path"] != "/lib/libvictim.so" || res["offset"] != fmt.Sprintf("%#x", lib.Offset+0x10) {
				t.Errorf("resolve: %s", out)
			}
			// A kernel address through a vCPU.
			sched := g.Truth.KernelSymbols["schedule"]
			out, err = runIntrospectCLI(append(base, "resolve", fmt.Sprintf("%#x", sched+1), "--vcpu", "0")...)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil || res["symbol"] != "schedule+0x1" || res["path"] != "[kernel]" {
				t.Errorf("resolve kernel address: %v %s", err, out)
			}
			// Failures: a user address without a process, a pid the
			// guest does not run.
			if _, err := runIntrospectCLI(append(base, "resolve", "0x400000")...); err == nil {
				t.Error("resolve of a user address without --pid or --vcpu succeeded")
			}
			if _, err := runIntrospectCLI(append(base, "maps", "99999")...); err == nil || !strings.Contains(err.Error(), "no such guest process") {
				t.Errorf("maps of a missing pid: %v", err)
			}
		})
	}
}
