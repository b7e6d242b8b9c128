package introspect

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// kernelTypes holds every structure offset introspection uses, read from the
// guest kernel's own BTF at run time. Nothing here is a per-kernel constant:
// a kernel whose BTF lacks a field fails with an error naming it.
type kernelTypes struct {
	listNext uint64 // list_head.next

	taskTasks, taskPID, taskTGID, taskComm, taskRealParent, taskMM, taskFlags uint64
	taskActiveMM                                                              uint64
	taskCommLen                                                               uint64

	mmPGD, mmMapCount, mmStartBrk, mmBrk, mmStartStack uint64
	// Maple tree (6.1+) or the older vm_area_struct list.
	hasMaple        bool
	mmMT            uint64 // mm_struct.mm_mt
	mmMmap          uint64 // mm_struct.mmap (list head pointer, < 6.1)
	mtRoot          uint64 // maple_tree.ma_root
	mapleNodeSize   uint64
	mr64Pivot       uint64 // offsets inside maple_node
	mr64Slot        uint64
	mr64Meta        uint64
	ma64Pivot       uint64
	ma64Slot        uint64
	ma64Meta        uint64
	metaEnd         uint64
	rangePivots     int // MAPLE_RANGE64_SLOTS - 1
	rangeSlots      int
	arangePivots    int
	arangeSlots     int
	mapleLeaf64     uint64 // enum maple_type values
	mapleRange64    uint64
	mapleARange64   uint64
	mapleDense      uint64
	vmaStart        uint64
	vmaEnd          uint64
	vmaFlags        uint64
	vmaPgoff        uint64
	vmaFile         uint64
	vmaOps          uint64
	vmaPrivate      uint64
	vmaNext         uint64 // vm_area_struct.vm_next (< 6.1)
	filePath        uint64 // file.f_path
	fileMapping     uint64
	fileInode       uint64
	pathMnt         uint64
	pathDentry      uint64
	dentryName      uint64 // dentry.d_name
	dentryParent    uint64
	dentryHashPprev uint64 // dentry.d_hash.pprev: NULL when unhashed (deleted)
	qstrLen         uint64
	qstrName        uint64
	mountMnt        uint64 // mount.mnt (the embedded vfsmount)
	mountParent     uint64
	mountMountpoint uint64
	vfsmountRoot    uint64
	asIPages        uint64 // address_space.i_pages
	xaHead          uint64 // xarray.xa_head
	xaNodeShift     uint64
	xaNodeSlots     uint64
	xaChunk         int // XA_CHUNK_SIZE, from the slots array
	inodeSize       uint64
	inodeIno        uint64
	pageSize        uint64 // sizeof(struct page)
	pageIndex       uint64
	specialName     uint64 // vm_special_mapping.name

	// Kernel modules (optional: without them module addresses get no
	// symbol).
	hasModules                            bool
	modList, modName, modNameLen, modBase uint64
	modTextSize, modKallsyms              uint64
	mksSymtab, mksNum, mksStrtab          uint64

	// Per-CPU variable holding the running task: current_task (<= 6.1) or
	// pcpu_hot.current_task (6.2+), as an offset into a CPU's area.
	percpuCurrent    uint64
	hasPercpuCurrent bool
}

// typeError names what a kernel's BTF lacks.
type typeError struct{ what string }

func (e *typeError) Error() string { return "guest kernel BTF: " + e.what }

// btfStruct finds a struct (or union) by name.
func btfStruct(spec *btf.Spec, name string) (btf.Type, error) {
	types, err := spec.AnyTypesByName(name)
	if err != nil {
		return nil, &typeError{fmt.Sprintf("no type %s", name)}
	}
	for _, t := range types {
		switch st := t.(type) {
		case *btf.Struct:
			if st.Size > 0 {
				return st, nil
			}
		case *btf.Union:
			if st.Size > 0 {
				return st, nil
			}
		}
	}
	return nil, &typeError{fmt.Sprintf("no complete struct %s", name)}
}

func members(t btf.Type) []btf.Member {
	switch st := btf.UnderlyingType(t).(type) {
	case *btf.Struct:
		return st.Members
	case *btf.Union:
		return st.Members
	}
	return nil
}

// findMember looks for a named member, descending into anonymous structs and
// unions as C does. The returned offset is in bytes.
func findMember(t btf.Type, name string, depth int) (uint64, btf.Type, bool) {
	if depth > 8 {
		return 0, nil, false
	}
	ms := members(t)
	for _, m := range ms {
		if m.Name == name {
			return uint64(m.Offset) / 8, m.Type, true
		}
	}
	for _, m := range ms {
		if m.Name != "" {
			continue
		}
		if off, typ, ok := findMember(m.Type, name, depth+1); ok {
			return uint64(m.Offset)/8 + off, typ, true
		}
	}
	return 0, nil, false
}

// fieldOf resolves a dotted member path ("d_name.name") of a struct.
func fieldOf(spec *btf.Spec, structName, path string) (uint64, btf.Type, error) {
	t, err := btfStruct(spec, structName)
	if err != nil {
		return 0, nil, err
	}
	var off uint64
	for _, part := range strings.Split(path, ".") {
		o, typ, ok := findMember(t, part, 0)
		if !ok {
			return 0, nil, &typeError{fmt.Sprintf("struct %s has no field %s", structName, path)}
		}
		off += o
		t = typ
	}
	return off, t, nil
}

func arrayLen(t btf.Type) int {
	if a, ok := btf.UnderlyingType(t).(*btf.Array); ok {
		return int(a.Nelems)
	}
	return 0
}

func sizeOf(spec *btf.Spec, name string) (uint64, error) {
	t, err := btfStruct(spec, name)
	if err != nil {
		return 0, err
	}
	n, err := btf.Sizeof(t)
	if err != nil {
		return 0, &typeError{fmt.Sprintf("size of %s: %v", name, err)}
	}
	return uint64(n), nil
}

func enumValue(spec *btf.Spec, enum, name string) (uint64, error) {
	types, err := spec.AnyTypesByName(enum)
	if err != nil {
		return 0, &typeError{fmt.Sprintf("no enum %s", enum)}
	}
	for _, t := range types {
		if e, ok := t.(*btf.Enum); ok {
			for _, v := range e.Values {
				if v.Name == name {
					return v.Value, nil
				}
			}
		}
	}
	return 0, &typeError{fmt.Sprintf("enum %s has no value %s", enum, name)}
}

// percpuVar returns the offset of a per-CPU variable inside a CPU's area,
// from the .data..percpu DATASEC that pahole emits for per-CPU variables.
func percpuVar(spec *btf.Spec, name string) (uint64, btf.Type, bool) {
	var ds *btf.Datasec
	if err := spec.TypeByName(".data..percpu", &ds); err != nil {
		return 0, nil, false
	}
	for _, v := range ds.Vars {
		if vr, ok := v.Type.(*btf.Var); ok && vr.Name == name {
			return uint64(v.Offset), vr.Type, true
		}
	}
	return 0, nil, false
}

// extractTypes reads every offset introspection needs from a parsed BTF.
func extractTypes(spec *btf.Spec) (*kernelTypes, error) {
	k := &kernelTypes{}
	var errs []error
	f := func(dst *uint64, structName, path string) {
		off, _, err := fieldOf(spec, structName, path)
		if err != nil {
			errs = append(errs, err)
			return
		}
		*dst = off
	}
	f(&k.listNext, "list_head", "next")
	f(&k.taskTasks, "task_struct", "tasks")
	f(&k.taskPID, "task_struct", "pid")
	f(&k.taskTGID, "task_struct", "tgid")
	f(&k.taskComm, "task_struct", "comm")
	f(&k.taskRealParent, "task_struct", "real_parent")
	f(&k.taskMM, "task_struct", "mm")
	f(&k.taskFlags, "task_struct", "flags")
	f(&k.taskActiveMM, "task_struct", "active_mm")
	if _, t, err := fieldOf(spec, "task_struct", "comm"); err == nil {
		k.taskCommLen = uint64(arrayLen(t))
	}
	if k.taskCommLen == 0 || k.taskCommLen > 64 {
		k.taskCommLen = 16
	}

	f(&k.mmPGD, "mm_struct", "pgd")
	f(&k.mmMapCount, "mm_struct", "map_count")
	f(&k.mmStartBrk, "mm_struct", "start_brk")
	f(&k.mmBrk, "mm_struct", "brk")
	f(&k.mmStartStack, "mm_struct", "start_stack")

	if off, _, err := fieldOf(spec, "mm_struct", "mm_mt"); err == nil {
		k.hasMaple = true
		k.mmMT = off
		f(&k.mtRoot, "maple_tree", "ma_root")
		var err error
		if k.mapleNodeSize, err = sizeOf(spec, "maple_node"); err != nil {
			errs = append(errs, err)
		}
		var mr64, ma64 uint64
		f(&mr64, "maple_node", "mr64")
		f(&ma64, "maple_node", "ma64")
		var o uint64
		f(&o, "maple_range_64", "pivot")
		k.mr64Pivot = mr64 + o
		f(&o, "maple_range_64", "slot")
		k.mr64Slot = mr64 + o
		f(&o, "maple_arange_64", "pivot")
		k.ma64Pivot = ma64 + o
		f(&o, "maple_arange_64", "slot")
		k.ma64Slot = ma64 + o
		f(&o, "maple_arange_64", "meta")
		k.ma64Meta = ma64 + o
		// maple_range_64 keeps its metadata in the last slot's space.
		if off, _, err := fieldOf(spec, "maple_range_64", "meta"); err == nil {
			k.mr64Meta = mr64 + off
		} else {
			k.mr64Meta = ^uint64(0)
		}
		f(&k.metaEnd, "maple_metadata", "end")
		if _, t, err := fieldOf(spec, "maple_range_64", "pivot"); err == nil {
			k.rangePivots = arrayLen(t)
		}
		if _, t, err := fieldOf(spec, "maple_range_64", "slot"); err == nil {
			k.rangeSlots = arrayLen(t)
		}
		if _, t, err := fieldOf(spec, "maple_arange_64", "pivot"); err == nil {
			k.arangePivots = arrayLen(t)
		}
		if _, t, err := fieldOf(spec, "maple_arange_64", "slot"); err == nil {
			k.arangeSlots = arrayLen(t)
		}
		for _, v := range []struct {
			dst  *uint64
			name string
		}{{&k.mapleDense, "maple_dense"}, {&k.mapleLeaf64, "maple_leaf_64"}, {&k.mapleRange64, "maple_range_64"}, {&k.mapleARange64, "maple_arange_64"}} {
			val, err := enumValue(spec, "maple_type", v.name)
			if err != nil {
				errs = append(errs, err)
			}
			*v.dst = val
		}
		if k.rangeSlots != k.rangePivots+1 || k.arangeSlots != k.arangePivots+1 || k.rangeSlots == 0 || k.arangeSlots == 0 || k.rangeSlots > 64 || k.arangeSlots > 64 {
			errs = append(errs, &typeError{fmt.Sprintf("maple node arrays have unexpected sizes (range %d/%d, arange %d/%d)", k.rangePivots, k.rangeSlots, k.arangePivots, k.arangeSlots)})
		}
		if k.mapleNodeSize == 0 || k.mapleNodeSize > 4096 || k.mapleNodeSize&(k.mapleNodeSize-1) != 0 {
			errs = append(errs, &typeError{fmt.Sprintf("maple_node size %d is not a power of two", k.mapleNodeSize)})
		}
	} else {
		f(&k.mmMmap, "mm_struct", "mmap")
		f(&k.vmaNext, "vm_area_struct", "vm_next")
	}

	f(&k.vmaStart, "vm_area_struct", "vm_start")
	f(&k.vmaEnd, "vm_area_struct", "vm_end")
	f(&k.vmaFlags, "vm_area_struct", "vm_flags")
	f(&k.vmaPgoff, "vm_area_struct", "vm_pgoff")
	f(&k.vmaFile, "vm_area_struct", "vm_file")
	f(&k.vmaOps, "vm_area_struct", "vm_ops")
	f(&k.vmaPrivate, "vm_area_struct", "vm_private_data")

	f(&k.filePath, "file", "f_path")
	f(&k.fileMapping, "file", "f_mapping")
	f(&k.fileInode, "file", "f_inode")
	f(&k.pathMnt, "path", "mnt")
	f(&k.pathDentry, "path", "dentry")
	f(&k.dentryName, "dentry", "d_name")
	f(&k.dentryParent, "dentry", "d_parent")
	f(&k.dentryHashPprev, "dentry", "d_hash.pprev")
	f(&k.qstrLen, "qstr", "len")
	f(&k.qstrName, "qstr", "name")
	f(&k.mountMnt, "mount", "mnt")
	f(&k.mountParent, "mount", "mnt_parent")
	f(&k.mountMountpoint, "mount", "mnt_mountpoint")
	f(&k.vfsmountRoot, "vfsmount", "mnt_root")

	f(&k.asIPages, "address_space", "i_pages")
	f(&k.xaHead, "xarray", "xa_head")
	f(&k.xaNodeShift, "xa_node", "shift")
	f(&k.xaNodeSlots, "xa_node", "slots")
	if _, t, err := fieldOf(spec, "xa_node", "slots"); err == nil {
		k.xaChunk = arrayLen(t)
	}
	if k.xaChunk != 16 && k.xaChunk != 64 {
		errs = append(errs, &typeError{fmt.Sprintf("xa_node.slots has %d entries (want 16 or 64)", k.xaChunk)})
	}
	f(&k.inodeSize, "inode", "i_size")
	f(&k.inodeIno, "inode", "i_ino")
	if n, err := sizeOf(spec, "page"); err == nil {
		k.pageSize = n
	} else {
		errs = append(errs, err)
	}
	f(&k.pageIndex, "page", "index")
	f(&k.specialName, "vm_special_mapping", "name")

	extractModuleTypes(spec, k)

	if off, _, ok := percpuVar(spec, "current_task"); ok {
		k.percpuCurrent, k.hasPercpuCurrent = off, true
	} else if off, t, ok := percpuVar(spec, "pcpu_hot"); ok {
		if o, _, ok := findMember(t, "current_task", 0); ok {
			k.percpuCurrent, k.hasPercpuCurrent = off+o, true
		}
	}
	return k, errors.Join(errs...)
}

// extractModuleTypes finds struct module's list, name, text range and
// symbol table: core_layout up to 6.3, mem[MOD_TEXT] from 6.4.
func extractModuleTypes(spec *btf.Spec, k *kernelTypes) {
	ok := true
	off := func(structName, path string) uint64 {
		o, _, err := fieldOf(spec, structName, path)
		if err != nil {
			ok = false
		}
		return o
	}
	k.modList = off("module", "list")
	k.modName = off("module", "name")
	k.modKallsyms = off("module", "kallsyms")
	if _, t, err := fieldOf(spec, "module", "name"); err == nil {
		k.modNameLen = uint64(arrayLen(t))
	}
	if cl, _, err := fieldOf(spec, "module", "core_layout"); err == nil {
		k.modBase = cl + off("module_layout", "base")
		k.modTextSize = cl + off("module_layout", "text_size")
	} else {
		// mem[] is indexed by enum mod_mem_type, MOD_TEXT first.
		mem := off("module", "mem")
		k.modBase = mem + off("module_memory", "base")
		k.modTextSize = mem + off("module_memory", "size")
	}
	k.mksSymtab = off("mod_kallsyms", "symtab")
	k.mksNum = off("mod_kallsyms", "num_symtab")
	k.mksStrtab = off("mod_kallsyms", "strtab")
	k.hasModules = ok
}
