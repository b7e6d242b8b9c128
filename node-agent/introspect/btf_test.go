package introspect

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// testBTF builds a small kernel BTF with every structure introspection
// reads, at offsets of our choosing, some behind anonymous unions as in the
// kernel's headers.
func testBTF(t testing.TB) []byte {
	u64 := &btf.Int{Name: "long unsigned int", Size: 8}
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	u8 := &btf.Int{Name: "unsigned char", Size: 1}
	i32 := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	ptr := &btf.Pointer{Target: &btf.Void{}}
	arr := func(t btf.Type, n uint32) *btf.Array { return &btf.Array{Index: u32, Type: t, Nelems: n} }
	m := func(name string, typ btf.Type, off uint32) btf.Member {
		return btf.Member{Name: name, Type: typ, Offset: btf.Bits(off * 8)}
	}
	st := func(name string, size uint32, ms ...btf.Member) *btf.Struct {
		return &btf.Struct{Name: name, Size: size, Members: ms}
	}
	listHead := st("list_head", 16, m("next", ptr, 0), m("prev", ptr, 8))
	task := st("task_struct", 4096,
		m("flags", u32, 44), m("tasks", listHead, 2192), m("mm", ptr, 2272), m("active_mm", ptr, 2280),
		m("pid", i32, 2416), m("tgid", i32, 2420), m("real_parent", ptr, 2432), m("comm", arr(u8, 16), 2976))
	mapleTree := st("maple_tree", 16, m("ma_flags", u32, 4), m("ma_root", ptr, 8))
	mm := st("mm_struct", 1024, m("", &btf.Struct{Size: 512, Members: []btf.Member{
		m("mm_mt", mapleTree, 0), m("pgd", ptr, 72), m("map_count", i32, 104),
		m("start_brk", u64, 288), m("brk", u64, 296), m("start_stack", u64, 304)}}, 0))
	meta := st("maple_metadata", 2, m("end", u8, 0), m("gap", u8, 1))
	mr64 := st("maple_range_64", 256, m("parent", ptr, 0), m("pivot", arr(u64, 15), 8),
		m("", &btf.Union{Size: 128, Members: []btf.Member{
			m("slot", arr(ptr, 16), 0),
			m("", &btf.Struct{Size: 128, Members: []btf.Member{m("pad", arr(ptr, 15), 0), m("meta", meta, 120)}}, 0)}}, 128))
	ma64 := st("maple_arange_64", 256, m("parent", ptr, 0), m("pivot", arr(u64, 9), 8), m("slot", arr(ptr, 10), 80),
		m("gap", arr(u64, 10), 160), m("meta", meta, 240))
	node := st("maple_node", 256, m("", &btf.Union{Size: 256, Members: []btf.Member{m("mr64", mr64, 0), m("ma64", ma64, 0)}}, 0))
	mapleType := &btf.Enum{Name: "maple_type", Size: 4, Values: []btf.EnumValue{{Name: "maple_dense", Value: 0}, {Name: "maple_leaf_64", Value: 1}, {Name: "maple_range_64", Value: 2}, {Name: "maple_arange_64", Value: 3}}}
	vma := st("vm_area_struct", 200, m("vm_start", u64, 0), m("vm_end", u64, 8),
		m("", &btf.Union{Size: 8, Members: []btf.Member{m("vm_flags", u64, 0)}}, 32),
		m("vm_ops", ptr, 96), m("vm_pgoff", u64, 104), m("vm_file", ptr, 112), m("vm_private_data", ptr, 120))
	path := st("path", 16, m("mnt", ptr, 0), m("dentry", ptr, 8))
	file := st("file", 256, m("f_path", path, 16), m("f_inode", ptr, 32), m("f_mapping", ptr, 216))
	qstr := st("qstr", 16, m("", &btf.Union{Size: 8, Members: []btf.Member{
		m("", &btf.Struct{Size: 8, Members: []btf.Member{m("hash", u32, 0), m("len", u32, 4)}}, 0), m("hash_len", u64, 0)}}, 0),
		m("name", ptr, 8))
	hlist := st("hlist_bl_node", 16, m("next", ptr, 0), m("pprev", ptr, 8))
	dentry := st("dentry", 192, m("d_hash", hlist, 8), m("d_parent", ptr, 24), m("d_name", qstr, 32))
	vfsmount := st("vfsmount", 16, m("mnt_root", ptr, 0), m("mnt_sb", ptr, 8))
	mount := st("mount", 256, m("mnt_parent", ptr, 16), m("mnt_mountpoint", ptr, 24), m("mnt", vfsmount, 32))
	xarray := st("xarray", 16, m("xa_lock", u32, 0), m("xa_head", ptr, 8))
	as := st("address_space", 128, m("host", ptr, 0), m("i_pages", xarray, 8))
	xaNode := st("xa_node", 576, m("shift", u8, 0), m("offset", u8, 1), m("slots", arr(ptr, 64), 40))
	inode := st("inode", 600, m("i_ino", u64, 64), m("i_size", u64, 80))
	page := st("page", 64, m("flags", u64, 0), m("", &btf.Union{Size: 40, Members: []btf.Member{
		m("", &btf.Struct{Size: 40, Members: []btf.Member{m("lru", listHead, 0), m("mapping", ptr, 16), m("index", u64, 24)}}, 0)}}, 8))
	special := st("vm_special_mapping", 48, m("name", ptr, 0))
	current := &btf.Var{Name: "current_task", Type: ptr, Linkage: btf.GlobalVar}
	percpu := &btf.Datasec{Name: ".data..percpu", Size: 0x20000, Vars: []btf.VarSecinfo{{Type: current, Offset: 0x1fb80, Size: 8}}}

	b, err := btf.NewBuilder(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []btf.Type{task, mm, node, mapleType, vma, file, dentry, mount, as, xaNode, inode, page, special, percpu} {
		if _, err := b.Add(typ); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestExtractTypes(t *testing.T) {
	got, err := loadTypes(testBTF(t))
	if err != nil {
		t.Fatal(err)
	}
	want := testTypes()
	want.percpuCurrent, want.hasPercpuCurrent, want.specialName = 0x1fb80, true, 0
	if *got != *want {
		t.Errorf("types from BTF:\n got %+v\nwant %+v", *got, *want)
	}
}

func TestExtractTypesNamesWhatIsMissing(t *testing.T) {
	b, err := btf.NewBuilder(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Add(&btf.Struct{Name: "task_struct", Size: 64, Members: []btf.Member{{Name: "pid", Type: &btf.Int{Name: "int", Size: 4}}}}); err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = loadTypes(raw)
	var te *typeError
	if !errors.As(err, &te) || !containsAll(err.Error(), "struct task_struct has no field tasks", "no type mm_struct") {
		t.Errorf("got %v", err)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !contains(s, sub) {
			return false
		}
	}
	return true
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// imageMemory maps data at the kernel image base with 4 KiB pages.
func imageMemory(data []byte) (*physMem, *mmu) {
	size := (uint64(len(data)) + pageSize - 1) &^ (pageSize - 1)
	pt := newPageTables(2*size+64*pageSize, 4)
	copy(pt.mem, data)
	for off := uint64(0); off < size; off += pageSize {
		pt.mapPage(0xffffffff81000000+off, off, pageSize)
	}
	pm := pt.physMem()
	m, _ := newMMU(pm, pt.root, 4)
	return pm, m
}

func TestFindBTFInImage(t *testing.T) {
	raw := testBTF(t)
	image := make([]byte, 3*pageSize+len(raw))
	copy(image[2*pageSize+8:], raw)
	copy(image[100:], btfMagic) // a decoy header
	pm, m := imageMemory(image)
	runs, err := m.mappings(kernelImageStart, kernelImageEnd)
	if err != nil {
		t.Fatal(err)
	}
	cache := &KernelCache{}
	types, _, at, size, err := findBTF(vmem{m}, runs, cache)
	if err != nil {
		t.Fatal(err)
	}
	if at != 0xffffffff81000000+2*pageSize+8 || size != uint64(len(raw)) || types.taskTasks != 2192 {
		t.Errorf("BTF at %#x (%d bytes), tasks at %d", at, size, types.taskTasks)
	}
	_ = pm
	// A second guest of the same build reuses the parsed types.
	types2, _, _, _, err := findBTF(vmem{m}, runs, cache)
	if err != nil || types2 != types {
		t.Errorf("cache miss: %v", err)
	}
}

func FuzzBTFFromMemory(f *testing.F) {
	raw := testBTF(f)
	f.Add(append(make([]byte, 16), raw...))
	f.Add(raw[:200])
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 256<<10 {
			return
		}
		_, m := imageMemory(data)
		runs, err := m.mappings(kernelImageStart, kernelImageEnd)
		if err != nil {
			return
		}
		_, _, _, _, _ = findBTF(vmem{m}, runs, nil)
	})
}
