package discovery_test

import (
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubevirtv1 "kubevirt.io/api/core/v1"

	"github.com/sidewatch/sidewatch/node-agent/discovery"
	"github.com/sidewatch/sidewatch/node-agent/discovery/fakeproc"
)

func TestParseGuestName(t *testing.T) {
	tests := []struct {
		args []string
		want discovery.VMIRef
		ok   bool
	}{
		// libvirt in virt-launcher
		{[]string{"qemu-kvm", "-name", "guest=default_vm1,debug-threads=on"}, discovery.VMIRef{Namespace: "default", Name: "vm1"}, true},
		// names with dots and dashes; the first '_' splits
		{[]string{"qemu", "-S", "-name", "guest=team-a_db.primary-0,debug-threads=on"}, discovery.VMIRef{Namespace: "team-a", Name: "db.primary-0"}, true},
		// guest= not first, escaped comma elsewhere
		{[]string{"qemu", "-name", "process=x,,y,guest=ns_vm,debug-threads=on"}, discovery.VMIRef{Namespace: "ns", Name: "vm"}, true},
		// shorthand -name value
		{[]string{"qemu", "-name", "ns_vm"}, discovery.VMIRef{Namespace: "ns", Name: "vm"}, true},
		// -name=value form
		{[]string{"qemu", "-name=guest=ns_vm"}, discovery.VMIRef{Namespace: "ns", Name: "vm"}, true},
		// no namespace separator: not a KubeVirt guest
		{[]string{"qemu", "-name", "guest=plainvm"}, discovery.VMIRef{}, false},
		// -name without value
		{[]string{"qemu", "-name"}, discovery.VMIRef{}, false},
		// not QEMU
		{[]string{"/bin/sleep", "100"}, discovery.VMIRef{}, false},
		// empty parts
		{[]string{"qemu", "-name", "guest=_vm"}, discovery.VMIRef{}, false},
		{[]string{"qemu", "-name", "guest=ns_"}, discovery.VMIRef{}, false},
	}
	for _, tt := range tests {
		got, ok := discovery.ParseGuestName(tt.args)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseGuestName(%q) = %v, %v; want %v, %v", tt.args, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParsePodUID(t *testing.T) {
	const uid = "0b6c0b1e-7d4e-4c53-9a7e-2f1d3c4b5a69"
	tests := []struct {
		in   string
		want string
	}{
		// systemd driver, cgroup v2
		{"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b6c0b1e_7d4e_4c53_9a7e_2f1d3c4b5a69.slice/cri-containerd-abc.scope\n", uid},
		// cgroupfs driver, cgroup v1
		{"12:pids:/kubepods/besteffort/pod0b6c0b1e-7d4e-4c53-9a7e-2f1d3c4b5a69/abc\n", uid},
		// guaranteed QoS has no QoS level in the path
		{"0::/kubepods/pod0b6c0b1e-7d4e-4c53-9a7e-2f1d3c4b5a69/abc\n", uid},
		// not in a pod
		{"0::/user.slice/user-0.slice/session-1.scope\n", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := discovery.ParsePodUID([]byte(tt.in)); got != tt.want {
			t.Errorf("ParsePodUID(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseVCPUComm(t *testing.T) {
	tests := []struct {
		in    string
		idx   int
		accel string
		ok    bool
	}{
		{"CPU 0/KVM", 0, "KVM", true},
		{"CPU 13/KVM", 13, "KVM", true},
		{"CPU 1/TCG", 1, "TCG", true},
		{"kvm-nx-lpage-re", 0, "", false},
		{"IO mon_iothread", 0, "", false},
		{"call_rcu", 0, "", false},
		{"CPU x/KVM", 0, "", false},
		{"CPU 1/HVF", 0, "", false},
		{"CPU -1/KVM", 0, "", false},
		{"qemu-kvm", 0, "", false},
	}
	for _, tt := range tests {
		idx, accel, ok := discovery.ParseVCPUComm(tt.in)
		if idx != tt.idx || accel != tt.accel || ok != tt.ok {
			t.Errorf("ParseVCPUComm(%q) = %d, %q, %v; want %d, %q, %v", tt.in, idx, accel, ok, tt.idx, tt.accel, tt.ok)
		}
	}
}

func TestParseStartTime(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{"42 (qemu-kvm) S 1 42 42 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 9 0 123456 1000 200", 123456, false},
		// comm with spaces and parentheses
		{"42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 9 0 777 1000 200", 777, false},
		{"42 (x) S 1", 0, true},
		{"garbage", 0, true},
	}
	for _, tt := range tests {
		got, err := discovery.ParseStartTime([]byte(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseStartTime(%q) = %d, %v; want %d, err=%v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// A node with two KubeVirt VMIs, a QEMU started by hand (TCG, no pod), a
// stale QEMU left in another pod under a VMI's name, and unrelated processes.
func fixtureNode(t *testing.T) (*fakeproc.Tree, map[string][]int) {
	t.Helper()
	tree := fakeproc.New(t.TempDir())
	tids := map[string][]int{}
	add := func(key string, q fakeproc.QEMU) {
		ids, err := tree.AddQEMU(q)
		if err != nil {
			t.Fatal(err)
		}
		tids[key] = ids
	}
	add("web", fakeproc.QEMU{PID: 1000, StartTime: 500, Namespace: "prod", Name: "web", PodUID: "11111111-1111-1111-1111-111111111111", VCPUs: 4})
	add("db", fakeproc.QEMU{PID: 2000, StartTime: 600, Namespace: "prod", Name: "db", PodUID: "22222222-2222-2222-2222-222222222222", CgroupfsStyle: true, VCPUs: 2})
	add("stale-db", fakeproc.QEMU{PID: 2500, StartTime: 700, Namespace: "prod", Name: "db", PodUID: "99999999-9999-9999-9999-999999999999", VCPUs: 2})
	add("tcg", fakeproc.QEMU{PID: 3000, StartTime: 800, Namespace: "dev", Name: "test", VCPUs: 2, Accel: "TCG"})
	for _, p := range []fakeproc.Process{
		{PID: 1, Comm: "systemd", Args: []string{"/sbin/init"}},
		{PID: 50, Comm: "virt-launcher", Args: []string{"/usr/bin/virt-launcher", "--name", "web", "--namespace", "prod"}},
		{PID: 60, Comm: "kthreadd"}, // kernel thread: empty cmdline
	} {
		if err := tree.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	return tree, tids
}

func TestScanFixture(t *testing.T) {
	tree, tids := fixtureNode(t)
	procs, err := discovery.Scanner{ProcRoot: tree.Root}.Scan()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range procs {
		got = append(got, p.VMI.String())
	}
	want := []string{"prod/web", "prod/db", "prod/db", "dev/test"}
	if !slices.Equal(got, want) {
		t.Fatalf("scanned %v, want %v", got, want)
	}
	web := procs[0]
	if web.PID != 1000 || web.StartTime != 500 || web.PodUID != "11111111-1111-1111-1111-111111111111" || web.Accelerator != "KVM" {
		t.Errorf("web = %+v", web)
	}
	if len(web.VCPUs) != 4 {
		t.Fatalf("web vCPUs = %v, want 4 (helper threads are not vCPUs)", web.VCPUs)
	}
	for i, v := range web.VCPUs {
		if v.Index != i || v.TID != tids["web"][i] {
			t.Errorf("web vCPU %d = %+v, want index %d tid %d", i, v, i, tids["web"][i])
		}
	}
	if procs[1].PodUID != "22222222-2222-2222-2222-222222222222" {
		t.Errorf("cgroupfs pod uid = %q", procs[1].PodUID)
	}
	if tcg := procs[3]; tcg.Accelerator != "TCG" || tcg.PodUID != "" || len(tcg.VCPUs) != 2 {
		t.Errorf("tcg = %+v", tcg)
	}
}

func vmi(ns, name string, pods ...string) discovery.VMI {
	return discovery.VMI{Ref: discovery.VMIRef{Namespace: ns, Name: name}, PodUIDs: pods}
}

func TestMatch(t *testing.T) {
	tree, _ := fixtureNode(t)
	procs, err := discovery.Scanner{ProcRoot: tree.Root}.Scan()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		vmis       []discovery.VMI
		wantPIDs   []int
		unresolved []string
	}{
		{"pods decide between two QEMUs with the same name",
			[]discovery.VMI{vmi("prod", "db", "22222222-2222-2222-2222-222222222222")}, []int{2000}, nil},
		{"the other pod (migration target on this node) wins when it is the VMI's",
			[]discovery.VMI{vmi("prod", "db", "99999999-9999-9999-9999-999999999999")}, []int{2500}, nil},
		{"no pod list yet: newest process",
			[]discovery.VMI{vmi("prod", "db")}, []int{2500}, nil},
		{"a QEMU outside any pod serves a VMI",
			[]discovery.VMI{vmi("dev", "test", "33333333-3333-3333-3333-333333333333")}, []int{3000}, nil},
		{"QEMU in a foreign pod is not the VMI's",
			[]discovery.VMI{vmi("prod", "web", "44444444-4444-4444-4444-444444444444")}, nil, []string{"prod/web"}},
		{"VMI without a process yet",
			[]discovery.VMI{vmi("prod", "web", "11111111-1111-1111-1111-111111111111"), vmi("prod", "new")}, []int{1000}, []string{"prod/new"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			targets, unresolved := discovery.Match(tt.vmis, procs)
			var pids []int
			for _, tg := range targets {
				pids = append(pids, tg.Process.PID)
			}
			var un []string
			for _, u := range unresolved {
				un = append(un, u.Ref.String())
			}
			if !slices.Equal(pids, tt.wantPIDs) || !slices.Equal(un, tt.unresolved) {
				t.Errorf("got pids %v unresolved %v, want %v %v", pids, un, tt.wantPIDs, tt.unresolved)
			}
		})
	}
}

func TestNodeVMI(t *testing.T) {
	mk := func(node string, phase kubevirtv1.VirtualMachineInstancePhase, pods map[types.UID]string) *kubevirtv1.VirtualMachineInstance {
		return &kubevirtv1.VirtualMachineInstance{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "vm", UID: "u1"},
			Status:     kubevirtv1.VirtualMachineInstanceStatus{NodeName: node, Phase: phase, ActivePods: pods},
		}
	}
	tests := []struct {
		name string
		in   *kubevirtv1.VirtualMachineInstance
		ok   bool
		pods []string
	}{
		{"running here", mk("n1", kubevirtv1.Running, map[types.UID]string{"p1": "n1"}), true, []string{"p1"}},
		{"migrating out: source pod and target pod on n2", mk("n1", kubevirtv1.Running, map[types.UID]string{"p1": "n1", "p2": "n2"}), true, []string{"p1"}},
		{"migrated in: nodeName moved to n1", mk("n1", kubevirtv1.Running, map[types.UID]string{"p0": "n0", "p1": "n1"}), true, []string{"p1"}},
		{"elsewhere", mk("n2", kubevirtv1.Running, nil), false, nil},
		{"finished", mk("n1", kubevirtv1.Succeeded, nil), false, nil},
		{"failed", mk("n1", kubevirtv1.Failed, nil), false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := discovery.NodeVMI(tt.in, "n1")
			if ok != tt.ok || !slices.Equal(got.PodUIDs, tt.pods) {
				t.Errorf("got %+v %v, want pods %v ok %v", got, ok, tt.pods, tt.ok)
			}
		})
	}
}

func TestTrackerFollowsThreadsAndProcesses(t *testing.T) {
	tree, tids := fixtureNode(t)
	tr := &discovery.Tracker{Scanner: discovery.Scanner{ProcRoot: tree.Root}, FullScanEvery: time.Hour}
	now := time.Unix(1000, 0)
	vmis := []discovery.VMI{vmi("prod", "web", "11111111-1111-1111-1111-111111111111"), vmi("dev", "test")}

	vcpuCount := func(targets []discovery.Target) map[string]int {
		m := map[string]int{}
		for _, tg := range targets {
			m[tg.VMI.Ref.String()] = len(tg.Process.VCPUs)
		}
		return m
	}
	targets, unresolved, err := tr.Refresh(now, vmis)
	if err != nil || len(unresolved) != 0 {
		t.Fatalf("Refresh: %v, unresolved %v", err, unresolved)
	}
	if got := vcpuCount(targets); got["prod/web"] != 4 || got["dev/test"] != 2 {
		t.Fatalf("vcpus %v", got)
	}

	// A vCPU thread exits (hot-unplug) and another appears.
	if err := tree.RemoveThread(1000, tids["web"][3]); err != nil {
		t.Fatal(err)
	}
	targets, _, _ = tr.Refresh(now.Add(time.Second), vmis)
	if got := vcpuCount(targets); got["prod/web"] != 3 {
		t.Fatalf("after thread exit: %v", got)
	}
	if err := tree.AddThread(1000, 1500, "CPU 7/KVM"); err != nil {
		t.Fatal(err)
	}
	targets, _, _ = tr.Refresh(now.Add(2*time.Second), vmis)
	if got := vcpuCount(targets); got["prod/web"] != 4 {
		t.Fatalf("after thread start: %v", got)
	}

	// The QEMU process exits: the VMI is unresolved until a new one shows up.
	if err := tree.Remove(3000); err != nil {
		t.Fatal(err)
	}
	targets, unresolved, _ = tr.Refresh(now.Add(3*time.Second), vmis)
	if len(targets) != 1 || len(unresolved) != 1 || unresolved[0].Ref.Name != "test" {
		t.Fatalf("after exit: targets %d unresolved %v", len(targets), unresolved)
	}
	// A restarted QEMU for it is found at once by the scan an unresolved
	// VMI triggers, without waiting for FullScanEvery.
	if _, err := tree.AddQEMU(fakeproc.QEMU{PID: 4000, StartTime: 900, Namespace: "dev", Name: "test", VCPUs: 1, Accel: "TCG"}); err != nil {
		t.Fatal(err)
	}
	targets, unresolved, _ = tr.Refresh(now.Add(4*time.Second), vmis)
	if len(unresolved) != 0 || vcpuCount(targets)["dev/test"] != 1 {
		t.Fatalf("after restart: %v unresolved %v", vcpuCount(targets), unresolved)
	}
}

func TestScanMissingRoot(t *testing.T) {
	_, err := discovery.Scanner{ProcRoot: "/nonexistent/proc"}.Scan()
	if err == nil {
		t.Fatal("want an error naming the proc root")
	}
}

func TestFilterRefs(t *testing.T) {
	procs := []discovery.Process{
		{VMI: discovery.VMIRef{Namespace: "a", Name: "x"}},
		{VMI: discovery.VMIRef{Namespace: "b", Name: "x"}},
		{VMI: discovery.VMIRef{Namespace: "b", Name: "y"}},
	}
	tests := []struct {
		pats []string
		want int
	}{
		{nil, 3}, {[]string{"a/x"}, 1}, {[]string{"x"}, 2}, {[]string{"b/*"}, 2}, {[]string{"c/*"}, 0},
	}
	for _, tt := range tests {
		if got := len(discovery.FilterRefs(procs, tt.pats)); got != tt.want {
			t.Errorf("FilterRefs(%v) kept %d, want %d", tt.pats, got, tt.want)
		}
	}
}
