package capabilities

import (
	"fmt"
	"slices"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// perf_event_attr.type values used by the table.
const (
	perfTypeHardware = 0
	perfTypeRaw      = 4
)

// Generic PERF_TYPE_HARDWARE configs.
const (
	hwCycles          = 0
	hwInstructions    = 1
	hwCacheReferences = 2
	hwCacheMisses     = 3
)

// Encoding is how one sidewatch event is opened on one CPU family.
type Encoding struct {
	Event v1alpha1.CounterEvent
	// Type and Config are perf_event_attr's.
	Type   uint32
	Config uint64
	// PMUEventName is the vendor's name in the kernel's pmu-events JSON.
	PMUEventName string
	// Missing, when set, says why the family has no such event.
	Missing string
}

// EncodingString is the heartbeat's form: "raw:0x412e" or
// "hardware:instructions".
func (e Encoding) EncodingString() string {
	if e.Missing != "" {
		return ""
	}
	switch e.Type {
	case perfTypeRaw:
		return fmt.Sprintf("raw:%#x", e.Config)
	case perfTypeHardware:
		switch e.Config {
		case hwCycles:
			return "hardware:cpu-cycles"
		case hwInstructions:
			return "hardware:instructions"
		case hwCacheReferences:
			return "hardware:cache-references"
		case hwCacheMisses:
			return "hardware:cache-misses"
		}
	}
	return ""
}

// Family is a CPU family sidewatch knows the events of.
type Family struct {
	// Name is the directory of tools/perf/pmu-events/arch/x86 the
	// encodings come from.
	Name   string
	Vendor string
	// CPUFamily and Models select it (as the kernel's mapfile.csv does);
	// MinStepping/MaxStepping split Skylake-SP from Cascade Lake.
	CPUFamily                int
	Models                   []int
	MinStepping, MaxStepping int
	Events                   []Encoding
	// Sources are the pmu-events JSON files the encodings were read from.
	Sources []string
}

func (f Family) matches(vendor string, family, model, stepping int) bool {
	if f.Vendor != vendor || f.CPUFamily != family || !slices.Contains(f.Models, model) {
		return false
	}
	return stepping >= f.MinStepping && (f.MaxStepping == 0 || stepping <= f.MaxStepping)
}

func intelRaw(event, umask uint64) uint64 { return event | umask<<8 }

// amdRaw places an AMD event select: bits 7:0 and 35:32 of the event,
// unit mask in 15:8.
func amdRaw(event, umask uint64) uint64 { return event&0xff | umask<<8 | (event>>8&0xf)<<32 }

func rangeOf(lo, hi int) []int {
	var out []int
	for m := lo; m <= hi; m++ {
		out = append(out, m)
	}
	return out
}

var (
	instructions = Encoding{Event: v1alpha1.EventInstructions, Type: perfTypeHardware, Config: hwInstructions, PMUEventName: "INST_RETIRED.ANY (fixed counter) / ex_ret_instr"}
	cycles       = Encoding{Event: v1alpha1.EventCycles, Type: perfTypeHardware, Config: hwCycles, PMUEventName: "CPU_CLK_UNHALTED.THREAD (fixed counter) / ls_not_halted_cyc"}
)

const (
	intelSplitInBusLocks = "counted inside bus_locks: the PMU's SQ_MISC event counts split locks together with uncacheable locks; per-thread split locks come from the kernel's split-lock signal where it is loaded"
	amdSplitInBusLocks   = "counted inside bus_locks: ls_locks.bus_lock counts locked operations that cross a cache line or hit uncacheable memory; per-thread split locks come from the kernel's split-lock signal where it is loaded"
)

// intelCore builds a Golden-Cove-or-older big-core table: the LLC events
// are the architectural LONGEST_LAT_CACHE ones on every generation; the
// bus-lock event moved from 0xF4 to 0x2C with Sapphire Rapids.
func intelCore(busLockName string, busLockEvent uint64) []Encoding {
	return []Encoding{
		{Event: v1alpha1.EventLLCReferences, Type: perfTypeRaw, Config: intelRaw(0x2e, 0x4f), PMUEventName: "LONGEST_LAT_CACHE.REFERENCE"},
		{Event: v1alpha1.EventLLCMisses, Type: perfTypeRaw, Config: intelRaw(0x2e, 0x41), PMUEventName: "LONGEST_LAT_CACHE.MISS"},
		{Event: v1alpha1.EventL1DMisses, Type: perfTypeRaw, Config: intelRaw(0x51, 0x01), PMUEventName: "L1D.REPLACEMENT"},
		{Event: v1alpha1.EventBusLocks, Type: perfTypeRaw, Config: intelRaw(busLockEvent, 0x10), PMUEventName: busLockName},
		{Event: v1alpha1.EventSplitLocks, Missing: intelSplitInBusLocks},
		instructions, cycles,
	}
}

// Families is the compact event table, read from the Linux kernel's
// tools/perf/pmu-events/arch/x86 JSON (torvalds/linux, 2024-2025 tree).
// The Intel LLC events 0x2E/0x4F and 0x2E/0x41 are also architectural
// (Intel SDM vol. 3B, "Architectural Performance Events").
var Families = []Family{
	{
		Name: "skylake", Vendor: "GenuineIntel", CPUFamily: 6,
		Models: []int{0x4e, 0x5e, 0x8e, 0x9e, 0xa5, 0xa6},
		Events: intelCore("SQ_MISC.SPLIT_LOCK", 0xf4),
		Sources: []string{
			"tools/perf/pmu-events/arch/x86/skylake/cache.json",
			"tools/perf/pmu-events/arch/x86/skylake/other.json",
		},
	},
	{
		Name: "skylakex", Vendor: "GenuineIntel", CPUFamily: 6,
		Models: []int{0x55}, MinStepping: 0, MaxStepping: 4,
		Events:  intelCore("SQ_MISC.SPLIT_LOCK", 0xf4),
		Sources: []string{"tools/perf/pmu-events/arch/x86/skylakex/cache.json"},
	},
	{
		Name: "cascadelakex", Vendor: "GenuineIntel", CPUFamily: 6,
		Models: []int{0x55}, MinStepping: 5, MaxStepping: 15,
		Events:  intelCore("SQ_MISC.SPLIT_LOCK", 0xf4),
		Sources: []string{"tools/perf/pmu-events/arch/x86/cascadelakex/cache.json"},
	},
	{
		Name: "icelake", Vendor: "GenuineIntel", CPUFamily: 6,
		Models:  []int{0x7d, 0x7e},
		Events:  intelCore("SQ_MISC.BUS_LOCK", 0xf4),
		Sources: []string{"tools/perf/pmu-events/arch/x86/icelake/cache.json"},
	},
	{
		Name: "icelakex", Vendor: "GenuineIntel", CPUFamily: 6,
		Models:  []int{0x6a, 0x6c},
		Events:  intelCore("SQ_MISC.BUS_LOCK", 0xf4),
		Sources: []string{"tools/perf/pmu-events/arch/x86/icelakex/cache.json"},
	},
	{
		Name: "sapphirerapids", Vendor: "GenuineIntel", CPUFamily: 6,
		Models:  []int{0x8f},
		Events:  intelCore("SQ_MISC.BUS_LOCK", 0x2c),
		Sources: []string{"tools/perf/pmu-events/arch/x86/sapphirerapids/cache.json"},
	},
	{
		Name: "emeraldrapids", Vendor: "GenuineIntel", CPUFamily: 6,
		Models:  []int{0xcf},
		Events:  intelCore("SQ_MISC.BUS_LOCK", 0x2c),
		Sources: []string{"tools/perf/pmu-events/arch/x86/emeraldrapids/cache.json"},
	},
	{
		Name: "graniterapids", Vendor: "GenuineIntel", CPUFamily: 6,
		Models:  []int{0xad, 0xae},
		Events:  intelCore("SQ_MISC.BUS_LOCK", 0x2c),
		Sources: []string{"tools/perf/pmu-events/arch/x86/graniterapids/cache.json"},
	},
	{
		// Zen 2: family 17h from model 30h (mapfile.csv gives the rest of
		// 17h to Zen 1).
		Name: "amdzen2", Vendor: "AuthenticAMD", CPUFamily: 0x17,
		Models: rangeOf(0x30, 0xff),
		Events: []Encoding{
			// Core-to-L2 requests that miss the L2 go to the L3, the LLC;
			// the L3's own PMU counts per CCX, not per thread.
			{Event: v1alpha1.EventLLCReferences, Type: perfTypeRaw, Config: amdRaw(0x64, 0x09), PMUEventName: "l2_cache_req_stat.ls_rd_blk_c+ic_fill_miss"},
			{Event: v1alpha1.EventLLCMisses, Type: perfTypeRaw, Config: amdRaw(0x43, 0x48), PMUEventName: "ls_refills_from_sys.ls_mabresp_lcl_dram+ls_mabresp_rmt_dram"},
			{Event: v1alpha1.EventL1DMisses, Type: perfTypeRaw, Config: amdRaw(0x43, 0x5b), PMUEventName: "ls_refills_from_sys (all sources)"},
			{Event: v1alpha1.EventBusLocks, Type: perfTypeRaw, Config: amdRaw(0x25, 0x01), PMUEventName: "ls_locks.bus_lock"},
			{Event: v1alpha1.EventSplitLocks, Missing: amdSplitInBusLocks},
			instructions, cycles,
		},
		Sources: []string{
			"tools/perf/pmu-events/arch/x86/amdzen2/cache.json",
			"tools/perf/pmu-events/arch/x86/amdzen2/memory.json",
		},
	},
	{
		// Zen 3: family 19h models 00h-0Fh and 20h-5Fh.
		Name: "amdzen3", Vendor: "AuthenticAMD", CPUFamily: 0x19,
		Models: append(rangeOf(0x00, 0x0f), rangeOf(0x20, 0x5f)...),
		Events: []Encoding{
			{Event: v1alpha1.EventLLCReferences, Type: perfTypeRaw, Config: amdRaw(0x64, 0x09), PMUEventName: "l2_cache_req_stat.ic_dc_miss_in_l2"},
			{Event: v1alpha1.EventLLCMisses, Type: perfTypeRaw, Config: amdRaw(0x44, 0x48), PMUEventName: "ls_any_fills_from_sys.mem_io_local+mem_io_remote"},
			{Event: v1alpha1.EventL1DMisses, Type: perfTypeRaw, Config: amdRaw(0x44, 0x5f), PMUEventName: "ls_any_fills_from_sys (all sources)"},
			{Event: v1alpha1.EventBusLocks, Type: perfTypeRaw, Config: amdRaw(0x25, 0x01), PMUEventName: "ls_locks.bus_lock"},
			{Event: v1alpha1.EventSplitLocks, Missing: amdSplitInBusLocks},
			instructions, cycles,
		},
		Sources: []string{
			"tools/perf/pmu-events/arch/x86/amdzen3/cache.json",
			"tools/perf/pmu-events/arch/x86/amdzen3/memory.json",
		},
	},
	{
		// Zen 4: the rest of family 19h (Genoa 10h-1Fh, Raphael 60h-6Fh, ...).
		Name: "amdzen4", Vendor: "AuthenticAMD", CPUFamily: 0x19,
		Models: append(rangeOf(0x10, 0x1f), rangeOf(0x60, 0xff)...),
		Events: []Encoding{
			{Event: v1alpha1.EventLLCReferences, Type: perfTypeRaw, Config: amdRaw(0x64, 0x09), PMUEventName: "l2_cache_req_stat.ic_dc_miss_in_l2"},
			{Event: v1alpha1.EventLLCMisses, Type: perfTypeRaw, Config: amdRaw(0x44, 0x48), PMUEventName: "ls_any_fills_from_sys.dram_io_all"},
			{Event: v1alpha1.EventL1DMisses, Type: perfTypeRaw, Config: amdRaw(0x44, 0xff), PMUEventName: "ls_any_fills_from_sys.all"},
			{Event: v1alpha1.EventBusLocks, Type: perfTypeRaw, Config: amdRaw(0x25, 0x01), PMUEventName: "ls_locks.bus_lock"},
			{Event: v1alpha1.EventSplitLocks, Missing: amdSplitInBusLocks},
			instructions, cycles,
		},
		Sources: []string{
			"tools/perf/pmu-events/arch/x86/amdzen4/cache.json",
			"tools/perf/pmu-events/arch/x86/amdzen4/core.json",
		},
	},
}

// FamilyFor finds the table for a CPU, or nil.
func FamilyFor(vendor string, family, model, stepping int) *Family {
	for i := range Families {
		if Families[i].matches(vendor, family, model, stepping) {
			return &Families[i]
		}
	}
	return nil
}

// genericEncodings are used for CPUs without a table: the kernel's own
// generic mapping for instructions, cycles and the LLC; nothing for the
// rest rather than a guess.
func genericEncodings(cpu string) []Encoding {
	missing := "no event table for " + cpu + " (supported: " + supportedNames() + ")"
	return []Encoding{
		{Event: v1alpha1.EventLLCReferences, Type: perfTypeHardware, Config: hwCacheReferences, PMUEventName: "kernel generic cache-references"},
		{Event: v1alpha1.EventLLCMisses, Type: perfTypeHardware, Config: hwCacheMisses, PMUEventName: "kernel generic cache-misses"},
		{Event: v1alpha1.EventL1DMisses, Missing: missing},
		{Event: v1alpha1.EventBusLocks, Missing: missing},
		{Event: v1alpha1.EventSplitLocks, Missing: missing},
		instructions, cycles,
	}
}

func supportedNames() string {
	s := ""
	for i, f := range Families {
		if i > 0 {
			s += ", "
		}
		s += f.Name
	}
	return s
}
