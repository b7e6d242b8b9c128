//go:build linux

package probe

import "testing"

func TestCPUFlags(t *testing.T) {
	info := "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme split_lock_detect\n\nprocessor\t: 1\nflags\t\t: fpu\n"
	flags, ok := cpuFlags(info)
	if !ok {
		t.Fatal("no flags line found")
	}
	for _, f := range []string{"fpu", "vme", "split_lock_detect"} {
		if _, ok := flags[f]; !ok {
			t.Errorf("flag %s not found", f)
		}
	}
	if _, ok := flags["bus_lock_detect"]; ok {
		t.Error("bus_lock_detect found")
	}
	if _, ok := cpuFlags("processor : 0\n"); ok {
		t.Error("flags found in cpuinfo without a flags line")
	}
}
