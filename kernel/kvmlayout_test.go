package kernel

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// kvmSpec builds BTF with the KVM structs laid out as in Linux 6.x, at
// made-up offsets, the way kvm_intel/kvm_amd module BTF would carry them.
func kvmSpec(t *testing.T, withVMX, withSVM bool) *btf.Spec {
	t.Helper()
	u8 := &btf.Int{Name: "u8", Size: 1}
	u32 := &btf.Int{Name: "u32", Size: 4}
	u64 := &btf.Int{Name: "u64", Size: 8}
	boolT := &btf.Int{Name: "_Bool", Size: 1, Encoding: btf.Bool}
	kvmArch := &btf.Struct{Name: "kvm_arch", Size: 64, Members: []btf.Member{
		{Name: "pad", Type: u64, Offset: 0},
		{Name: "bus_lock_detection_enabled", Type: boolT, Offset: 40 * 8},
	}}
	kvm := &btf.Struct{Name: "kvm", Size: 4096, Members: []btf.Member{
		{Name: "mm", Type: u64, Offset: 0},
		{Name: "arch", Type: kvmArch, Offset: 3000 * 8},
	}}
	vcpu := &btf.Struct{Name: "kvm_vcpu", Size: 512, Members: []btf.Member{
		{Name: "kvm", Type: &btf.Pointer{Target: kvm}, Offset: 0},
	}}
	types := []btf.Type{u8, u32, u64, boolT, kvmArch, kvm, vcpu}
	if withVMX {
		// union vmx_exit_reason { struct { u32 basic:16; ... }; u32 full; }
		reason := &btf.Union{Name: "vmx_exit_reason", Size: 4, Members: []btf.Member{
			{Name: "", Type: &btf.Struct{Size: 4, Members: []btf.Member{{Name: "basic", Type: u32, BitfieldSize: 16}}}},
			{Name: "full", Type: u32},
		}}
		types = append(types, &btf.Struct{Name: "vcpu_vmx", Size: 8192, Members: []btf.Member{
			{Name: "vcpu", Type: vcpu, Offset: 0},
			// Behind an anonymous struct, to exercise the search.
			{Name: "", Type: &btf.Struct{Size: 16, Members: []btf.Member{
				{Name: "pad", Type: u64, Offset: 0},
				{Name: "exit_reason", Type: reason, Offset: 8 * 8},
			}}, Offset: 6000 * 8},
		}})
	}
	if withSVM {
		control := &btf.Struct{Name: "vmcb_control_area", Size: 1024, Members: []btf.Member{
			{Name: "intercepts", Type: &btf.Array{Type: u32, Index: u32, Nelems: 6}, Offset: 0},
			{Name: "exit_code", Type: u32, Offset: 0x70 * 8},
			{Name: "exit_code_hi", Type: u32, Offset: 0x74 * 8},
		}}
		vmcb := &btf.Struct{Name: "vmcb", Size: 4096, Members: []btf.Member{{Name: "control", Type: control, Offset: 0}}}
		types = append(types, vmcb, &btf.Struct{Name: "vcpu_svm", Size: 8192, Members: []btf.Member{
			{Name: "vcpu", Type: vcpu, Offset: 0},
			{Name: "vmcb", Type: &btf.Pointer{Target: vmcb}, Offset: 512 * 8},
		}})
	}
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func TestResolveKVMLayout(t *testing.T) {
	for _, c := range []struct {
		name     string
		vmx, svm bool
		want     KVMLayout
		missing  []string
	}{
		{"intel", true, false, KVMLayout{VMX: true, VMXExitReason: 6008, BusLockEnabled: true, VCPUKVM: 0, KVMBusLockEnabled: 3040}, []string{"vcpu_svm"}},
		{"amd", false, true, KVMLayout{SVM: true, SVMVMCB: 512, VMCBExitCode: 0x70, BusLockEnabled: true, KVMBusLockEnabled: 3040}, []string{"vcpu_vmx"}},
		{"both", true, true, KVMLayout{VMX: true, VMXExitReason: 6008, SVM: true, SVMVMCB: 512, VMCBExitCode: 0x70, BusLockEnabled: true, KVMBusLockEnabled: 3040}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := ResolveKVMLayout(nil, kvmSpec(t, c.vmx, c.svm))
			missing := got.Missing
			got.Missing = nil
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
			if len(missing) != len(c.missing) {
				t.Fatalf("missing %q, want mentions of %q", missing, c.missing)
			}
			for i, m := range c.missing {
				if !strings.Contains(missing[i], m) {
					t.Errorf("missing[%d] = %q, want it to name %s", i, missing[i], m)
				}
			}
		})
	}
	t.Run("nothing", func(t *testing.T) {
		got := ResolveKVMLayout()
		if got.VMX || got.SVM || got.BusLockEnabled || len(got.Missing) != 3 {
			t.Errorf("no BTF: %+v", got)
		}
	})
}

func TestFieldOffsetChecksSize(t *testing.T) {
	spec := kvmSpec(t, true, false)
	if _, err := fieldOffset([]*btf.Spec{spec}, "vcpu_vmx", 8, "exit_reason"); err == nil || !strings.Contains(err.Error(), "4 bytes, want 8") {
		t.Errorf("wrong size accepted: %v", err)
	}
	if _, err := fieldOffset([]*btf.Spec{spec}, "vcpu_vmx", 4, "nope"); err == nil || !strings.Contains(err.Error(), "no member nope") {
		t.Errorf("missing member: %v", err)
	}
}
