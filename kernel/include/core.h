/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Minimal kernel type definitions for sidewatch's eBPF programs.
 *
 * We do not generate vmlinux.h from the build host's BTF: a full dump is
 * megabytes of types we never touch and changes with every kernel, so
 * `make generate` would give different output on different machines. These
 * definitions name only the fields the programs read. Structs marked
 * preserve_access_index are CO-RE relocated at load time against the running
 * kernel's BTF (/sys/kernel/btf/vmlinux), so their layout here does not need
 * to match any kernel; only field names and types must exist.
 *
 * The UAPI parts (types, map types, flags) are fixed ABI and spelled out so
 * the build needs no kernel headers beyond libbpf's bpf_helpers.h.
 */
#ifndef SIDEWATCH_CORE_H
#define SIDEWATCH_CORE_H

/*
 * bpf_tracing.h names pt_regs fields the kernel's way (di, ip) only when it
 * sees vmlinux.h's guard; these definitions are our vmlinux.h.
 */
#define __VMLINUX_H__

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;

/* UAPI: include/uapi/linux/bpf.h */
enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
};
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

/* UAPI: include/uapi/linux/perf_event.h */
#define PERF_SAMPLE_IP (1ULL << 0)

#define E2BIG 7
#define EEXIST 17

/*
 * x86-64 struct pt_regs, which is also bpf_user_pt_regs_t on x86 and so the
 * fixed layout of the perf_event program context below. Not CO-RE: the
 * verifier rewrites context accesses itself.
 */
struct pt_regs {
	unsigned long r15;
	unsigned long r14;
	unsigned long r13;
	unsigned long r12;
	unsigned long bp;
	unsigned long bx;
	unsigned long r11;
	unsigned long r10;
	unsigned long r9;
	unsigned long r8;
	unsigned long ax;
	unsigned long cx;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
	unsigned long ip;
	unsigned long cs;
	unsigned long flags;
	unsigned long sp;
	unsigned long ss;
};

/* UAPI: include/uapi/linux/bpf_perf_event.h, the perf_event program context. */
struct bpf_perf_event_data {
	struct pt_regs regs;
	__u64 sample_period;
	__u64 addr;
};

/* UAPI: the raw tracepoint program context. */
struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

/* Kernel-internal, CO-RE relocated. */

struct rq {
	u64 clock;
} __attribute__((preserve_access_index));

struct cfs_rq {
	struct rq *rq; /* only with CONFIG_FAIR_GROUP_SCHED */
} __attribute__((preserve_access_index));

struct sched_entity {
	struct cfs_rq *cfs_rq;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	struct sched_entity se;
} __attribute__((preserve_access_index));

struct perf_sample_data {
	u64 sample_flags;
	u64 ip;
} __attribute__((preserve_access_index));

struct perf_event {
	u64 id;
} __attribute__((preserve_access_index));

/*
 * What a perf_event program's context really points at
 * (kernel/trace/bpf_trace.c: bpf_overflow_handler builds it on the stack).
 */
struct bpf_perf_event_data_kern {
	struct pt_regs *regs;
	struct perf_sample_data *data;
	struct perf_event *event;
} __attribute__((preserve_access_index));

#endif /* SIDEWATCH_CORE_H */
