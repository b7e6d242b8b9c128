package kernel

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// KVMLayout is where kvm_exit finds the exit reason and the VM's bus-lock
// setting through the struct kvm_vcpu pointer the tracepoint passes. These
// structs live in the kvm, kvm_intel and kvm_amd modules (or vmlinux when
// built in), so the loader resolves the offsets from their BTF in Go and
// hands them to the program as constants. A part not found stays off and
// Missing says why: kvm_exit then counts nothing for that ISA.
type KVMLayout struct {
	// VMX: offsetof(struct vcpu_vmx, exit_reason), a u32 (kvm_intel).
	VMX           bool
	VMXExitReason uint32
	// SVM: offsetof(struct vcpu_svm, vmcb), a pointer, and
	// offsetof(struct vmcb, control.exit_code), a u32 (kvm_amd).
	SVM          bool
	SVMVMCB      uint32
	VMCBExitCode uint32
	// BusLockEnabled: offsetof(struct kvm_vcpu, kvm), a pointer, and
	// offsetof(struct kvm, arch.bus_lock_detection_enabled), a bool (kvm):
	// whether the VM's VMM turned on KVM_CAP_X86_BUS_LOCK_EXIT.
	BusLockEnabled    bool
	VCPUKVM           uint32
	KVMBusLockEnabled uint32
	// Missing explains each part that is off.
	Missing []string
}

// ResolveKVMLayout looks the KVM structs up in specs (vmlinux first, then
// module BTF) and returns what it found.
func ResolveKVMLayout(specs ...*btf.Spec) KVMLayout {
	var l KVMLayout
	if off, err := fieldOffset(specs, "vcpu_vmx", 4, "exit_reason"); err != nil {
		l.Missing = append(l.Missing, fmt.Sprintf("VMX exit reason: %v (is kvm_intel loaded?)", err))
	} else {
		l.VMX, l.VMXExitReason = true, off
	}

	vmcb, err1 := fieldOffset(specs, "vcpu_svm", 8, "vmcb")
	code, err2 := fieldOffset(specs, "vmcb", 4, "control", "exit_code")
	if err := errors.Join(err1, err2); err != nil {
		l.Missing = append(l.Missing, fmt.Sprintf("SVM exit code: %v (is kvm_amd loaded?)", strings.ReplaceAll(err.Error(), "\n", "; ")))
	} else {
		l.SVM, l.SVMVMCB, l.VMCBExitCode = true, vmcb, code
	}

	vk, err1 := fieldOffset(specs, "kvm_vcpu", 8, "kvm")
	bl, err2 := fieldOffset(specs, "kvm", 1, "arch", "bus_lock_detection_enabled")
	if err := errors.Join(err1, err2); err != nil {
		l.Missing = append(l.Missing, fmt.Sprintf("bus-lock exit setting: %v (is kvm loaded?)", strings.ReplaceAll(err.Error(), "\n", "; ")))
	} else {
		l.BusLockEnabled, l.VCPUKVM, l.KVMBusLockEnabled = true, vk, bl
	}
	return l
}

// flags is layout_flags in buslock.bpf.c.
func (l KVMLayout) flags() uint32 {
	var f uint32
	if l.VMX {
		f |= 1 << 0
	}
	if l.SVM {
		f |= 1 << 1
	}
	if l.BusLockEnabled {
		f |= 1 << 2
	}
	return f
}

// fieldOffset finds struct name in the first spec that has it and returns
// the byte offset of the member at path (descending through named and
// anonymous members), checking the member is size bytes wide.
func fieldOffset(specs []*btf.Spec, name string, size int, path ...string) (uint32, error) {
	var s *btf.Struct
	for _, spec := range specs {
		if spec == nil {
			continue
		}
		var found *btf.Struct
		if err := spec.TypeByName(name, &found); err == nil {
			s = found
			break
		}
	}
	if s == nil {
		return 0, fmt.Errorf("no struct %s in BTF", name)
	}
	var typ btf.Type = s
	var off uint32
	for _, field := range path {
		m, base, ok := findMember(typ, field)
		if !ok {
			return 0, fmt.Errorf("struct %s has no member %s", name, strings.Join(path, "."))
		}
		if m.BitfieldSize != 0 {
			return 0, fmt.Errorf("%s.%s is a bitfield", name, strings.Join(path, "."))
		}
		off += base + m.Offset.Bytes()
		typ = m.Type
	}
	got, err := btf.Sizeof(typ)
	if err != nil {
		return 0, fmt.Errorf("size of %s.%s: %w", name, strings.Join(path, "."), err)
	}
	if got != size {
		return 0, fmt.Errorf("%s.%s is %d bytes, want %d", name, strings.Join(path, "."), got, size)
	}
	return off, nil
}

// findMember looks for a named member of a struct or union, also inside
// anonymous struct/union members, and returns it with the byte offset of
// the anonymous member it was found in.
func findMember(typ btf.Type, name string) (btf.Member, uint32, bool) {
	var members []btf.Member
	switch t := btf.UnderlyingType(typ).(type) {
	case *btf.Struct:
		members = t.Members
	case *btf.Union:
		members = t.Members
	default:
		return btf.Member{}, 0, false
	}
	for _, m := range members {
		if m.Name == name {
			return m, 0, true
		}
	}
	for _, m := range members {
		if m.Name != "" {
			continue
		}
		if inner, base, ok := findMember(m.Type, name); ok {
			return inner, m.Offset.Bytes() + base, true
		}
	}
	return btf.Member{}, 0, false
}
