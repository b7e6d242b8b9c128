//go:build ignore
// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/*
 * Bus and split locks of guests, counted per thread without a PMU.
 *
 * kvm_exit (raw tracepoint kvm:kvm_exit, args: struct kvm_vcpu *, u32 isa)
 *   counts bus-lock VM exits: VMX exit reason 74, or any VMX exit with the
 *   bus_lock_detected bit, and SVM exit code 0xa5. These exits only happen
 *   for VMs whose VMM enabled KVM_CAP_X86_BUS_LOCK_EXIT. The tracepoint does
 *   not pass the exit reason, so it is read from the vCPU the way KVM's own
 *   get_exit_info does (vcpu_vmx.exit_reason, vcpu_svm.vmcb->control.exit_code),
 *   at offsets the loader resolves from the kvm_intel/kvm_amd BTF and writes
 *   into the constants below. Those structs live in modules the loader may
 *   not have, so this is CO-RE done in Go rather than clang relocations.
 * split_lock (fentry, or kprobe, on handle_guest_split_lock(unsigned long ip))
 *   counts guest #AC exceptions on split locks that KVM hands to the host.
 * host_bus_lock (fentry, or kprobe, on handle_bus_lock(struct pt_regs *))
 *   counts bus-lock #DB traps in host user mode, e.g. a TCG vCPU thread.
 *
 * All three run in the vCPU thread, so the current thread id is the vCPU's.
 */
#include "include/core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "include/sidewatch.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* KVM layout, set by the loader; see kernel/kvmlayout.go. */
const volatile __u32 layout_flags = 0;
const volatile __u32 vmx_exit_reason_off = 0; /* offsetof(struct vcpu_vmx, exit_reason) */
const volatile __u32 svm_vmcb_off = 0;        /* offsetof(struct vcpu_svm, vmcb) */
const volatile __u32 vmcb_exit_code_off = 0;  /* offsetof(struct vmcb, control.exit_code) */
const volatile __u32 vcpu_kvm_off = 0;        /* offsetof(struct kvm_vcpu, kvm) */
const volatile __u32 kvm_bus_lock_off = 0;    /* offsetof(struct kvm, arch.bus_lock_detection_enabled) */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* the loader sets Options.MaxThreads */
	__type(key, __u32);
	__type(value, struct lock_counts);
} lock_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vcpu_seen);
} vcpu_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lock_stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&lock_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline struct lock_counts *counts_for(__u32 tid)
{
	struct lock_counts *c = bpf_map_lookup_elem(&lock_counts, &tid);
	if (c)
		return c;
	struct lock_counts zero = {};
	long err = bpf_map_update_elem(&lock_counts, &tid, &zero, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		stat_inc(STAT_TABLE_FULL);
		return 0;
	}
	return bpf_map_lookup_elem(&lock_counts, &tid);
}

/*
 * Reads guest state through the vCPU pointer. bpf_probe_read (the compat
 * helper) reads a kernel address exactly like bpf_probe_read_kernel, which is
 * all it ever gets from the tracepoint; it also accepts a user address, which
 * is how BPF_PROG_TEST_RUN feeds the program a synthetic vCPU in tests.
 */
static __always_inline long read_vcpu(void *dst, __u32 size, __u64 addr)
{
	return bpf_probe_read(dst, size, (const void *)addr);
}

/* Records, once per vCPU per CPU, that this thread runs a hardware vCPU. */
static __always_inline void note_vcpu(__u64 vcpu, __u32 isa, __u32 tid)
{
	__u32 zero = 0;
	struct vcpu_seen *seen = bpf_map_lookup_elem(&vcpu_seen, &zero);
	if (!seen || (seen->vcpu == vcpu && seen->tid == tid))
		return;
	seen->vcpu = vcpu;
	seen->tid = tid;

	struct lock_counts *c = counts_for(tid);
	if (!c)
		return;
	__u32 flags = LOCK_FLAG_KVM_EXIT;
	if (isa == KVM_ISA_VMX)
		flags |= LOCK_FLAG_VMX;
	else if (isa == KVM_ISA_SVM)
		flags |= LOCK_FLAG_SVM;
	if (layout_flags & LAYOUT_BUS_LOCK_ENABLED) {
		__u64 kvm = 0;
		__u8 on = 0;
		if (read_vcpu(&kvm, sizeof(kvm), vcpu + vcpu_kvm_off) ||
		    read_vcpu(&on, sizeof(on), kvm + kvm_bus_lock_off))
			stat_inc(STAT_READ_ERROR);
		else if (on)
			flags |= LOCK_FLAG_BUS_LOCK_EXIT_ON;
	}
	/* Rare (a new vCPU on this CPU), so a plain read-modify-write will do. */
	WRITE_ONCE(c->flags, c->flags | flags);
}

SEC("raw_tp/kvm_exit")
int kvm_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 vcpu = ctx->args[0];
	__u32 isa = (__u32)ctx->args[1];
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u32 reason = 0;
	bool coincident = false;

	note_vcpu(vcpu, isa, tid);

	if (isa == KVM_ISA_VMX) {
		if (!(layout_flags & LAYOUT_VMX))
			return 0;
		if (read_vcpu(&reason, sizeof(reason), vcpu + vmx_exit_reason_off)) {
			stat_inc(STAT_READ_ERROR);
			return 0;
		}
		if (reason & VMX_EXIT_FAILED_VMENTRY)
			return 0;
		if ((reason & 0xffff) != VMX_EXIT_BUS_LOCK) {
			if (!(reason & VMX_EXIT_BUS_LOCK_DETECTED))
				return 0;
			coincident = true;
		}
	} else if (isa == KVM_ISA_SVM) {
		__u64 vmcb = 0;
		if (!(layout_flags & LAYOUT_SVM))
			return 0;
		if (read_vcpu(&vmcb, sizeof(vmcb), vcpu + svm_vmcb_off) ||
		    read_vcpu(&reason, sizeof(reason), vmcb + vmcb_exit_code_off)) {
			stat_inc(STAT_READ_ERROR);
			return 0;
		}
		if (reason != SVM_EXIT_BUS_LOCK)
			return 0;
	} else {
		return 0;
	}

	struct lock_counts *c = counts_for(tid);
	if (!c)
		return 0;
	if (coincident)
		__sync_fetch_and_add(&c->bus_lock_coincident, 1);
	else
		__sync_fetch_and_add(&c->bus_lock_exits, 1);
	WRITE_ONCE(c->last_exit_reason, reason);
	return 0;
}

static __always_inline void count_split_lock(__u64 ip)
{
	struct lock_counts *c = counts_for((__u32)bpf_get_current_pid_tgid());
	if (!c)
		return;
	__sync_fetch_and_add(&c->split_locks, 1);
	WRITE_ONCE(c->last_split_lock_ip, ip);
}

static __always_inline void count_host_bus_lock(struct pt_regs *regs)
{
	__u64 ip = 0;
	if (bpf_probe_read_kernel(&ip, sizeof(ip), &regs->ip))
		stat_inc(STAT_READ_ERROR);
	struct lock_counts *c = counts_for((__u32)bpf_get_current_pid_tgid());
	if (!c)
		return;
	__sync_fetch_and_add(&c->host_bus_locks, 1);
	WRITE_ONCE(c->last_host_bus_lock_ip, ip);
}

SEC("fentry/handle_guest_split_lock")
int BPF_PROG(split_lock, unsigned long ip)
{
	count_split_lock(ip);
	return 0;
}

SEC("kprobe/handle_guest_split_lock")
int BPF_KPROBE(split_lock_kprobe, unsigned long ip)
{
	count_split_lock(ip);
	return 0;
}

SEC("fentry/handle_bus_lock")
int BPF_PROG(host_bus_lock, struct pt_regs *regs)
{
	count_host_bus_lock(regs);
	return 0;
}

SEC("kprobe/handle_bus_lock")
int BPF_KPROBE(host_bus_lock_kprobe, struct pt_regs *regs)
{
	count_host_bus_lock(regs);
	return 0;
}
