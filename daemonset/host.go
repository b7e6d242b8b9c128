package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/internal/version"
)

// hostInfo is the node's part of every evidence snapshot.
func hostInfo(caps v1alpha1.NodeCapabilities, sysRoot string) evidence.Host {
	p := caps.PMU
	h := evidence.Host{
		Node: caps.Node, CPUModel: p.ModelName, Vendor: p.Vendor, Family: p.Family, Model: p.Model, Stepping: p.Stepping,
		Microcode: p.Microcode, HardwareCounters: p.Present && p.GuestOnlyCounting, AgentVersion: version.Version,
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.KernelRelease = unix.ByteSliceToString(u.Release[:])
	}
	cpu := filepath.Join(sysRoot, "devices/system/cpu")
	if b, err := os.ReadFile(filepath.Join(cpu, "smt/control")); err == nil {
		h.SMT = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(cpu, "online")); err == nil {
		h.LogicalCPUs = countCPUList(strings.TrimSpace(string(b)))
	}
	domains := map[string]bool{}
	if paths, _ := filepath.Glob(filepath.Join(cpu, "cpu[0-9]*/cache/index3/shared_cpu_list")); len(paths) > 0 {
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil {
				domains[strings.TrimSpace(string(b))] = true
			}
		}
		h.LLCDomains = len(domains)
	}
	return h
}

// countCPUList counts the CPUs of a sysfs list such as "0-3,8-11".
func countCPUList(s string) int {
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		if b >= a {
			n += b - a + 1
		}
	}
	return n
}
