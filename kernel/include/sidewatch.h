/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * Types shared by sidewatch's eBPF programs and the Go loader. bpf2go turns
 * the ones named with -type in gen.go into Go structs, so a field added here
 * shows up in Go after `make generate`.
 */
#ifndef SIDEWATCH_H
#define SIDEWATCH_H

#define barrier() asm volatile("" ::: "memory")
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

/* Per-CPU drop and error counters, one PERCPU_ARRAY per object. */
enum stat_index {
	STAT_TABLE_FULL = 0,  /* a hash map refused a new entry (E2BIG) */
	STAT_READ_ERROR = 1,  /* a kernel or guest-state read faulted */
	STAT_UNKNOWN_EVENT = 2, /* a sample from a perf event not registered */
	STAT_TIMELINE_FULL = 3, /* the timelines map refused a new entry */
	STAT_MAX = 4,
};

/* ---- bus and split locks (buslock.bpf.c) ---- */

/* include/linux/kvm_host.h: the isa argument of trace_kvm_exit. */
#define KVM_ISA_VMX 1
#define KVM_ISA_SVM 2

/* arch/x86/include/uapi/asm/vmx.h: EXIT_REASON_BUS_LOCK. */
#define VMX_EXIT_BUS_LOCK 74
/* union vmx_exit_reason: bus_lock_detected is bit 26, failed_vmentry bit 31. */
#define VMX_EXIT_BUS_LOCK_DETECTED (1U << 26)
#define VMX_EXIT_FAILED_VMENTRY (1U << 31)
/* arch/x86/include/uapi/asm/svm.h: SVM_EXIT_BUS_LOCK. */
#define SVM_EXIT_BUS_LOCK 0xa5

/* layout_flags: which KVM offsets the loader resolved from BTF. */
#define LAYOUT_VMX (1U << 0)
#define LAYOUT_SVM (1U << 1)
#define LAYOUT_BUS_LOCK_ENABLED (1U << 2)

/* lock_counts.flags */
#define LOCK_FLAG_KVM_EXIT (1U << 0)          /* kvm_exit fired in this thread */
#define LOCK_FLAG_VMX (1U << 1)               /* ... on Intel VMX */
#define LOCK_FLAG_SVM (1U << 2)               /* ... on AMD SVM */
#define LOCK_FLAG_BUS_LOCK_EXIT_ON (1U << 3)  /* its VM enabled KVM_CAP_X86_BUS_LOCK_EXIT */

/* Value of lock_counts, keyed by thread id. Counters only grow. */
struct lock_counts {
	__u64 split_locks;        /* handle_guest_split_lock: guest #AC on a split lock */
	__u64 bus_lock_exits;     /* kvm_exit: VMX reason 74 or SVM code 0xa5 */
	__u64 bus_lock_coincident; /* kvm_exit: another VMX reason with bus_lock_detected */
	__u64 host_bus_locks;     /* handle_bus_lock: #DB after a bus lock in host user mode */
	__u64 last_split_lock_ip; /* guest RIP handle_guest_split_lock was given */
	__u64 last_host_bus_lock_ip; /* user IP of the last host bus-lock trap */
	__u32 last_exit_reason;   /* raw exit reason of the last bus-lock exit */
	__u32 flags;              /* LOCK_FLAG_* */
};

/* Per-CPU memo of the vCPU last seen in kvm_exit, so flags are read once. */
struct vcpu_seen {
	__u64 vcpu;
	__u32 tid;
	__u32 pad;
};

/* ---- co-scheduling (cosched.bpf.c) ---- */

/* The agent's registration of a vCPU thread, keyed by thread id. */
struct thread_info {
	__u32 vmi; /* loader-assigned VMI number, never 0 */
	__u32 pad;
};

/*
 * What runs on one CPU, written only by that CPU in sched_switch and read by
 * its peers. seq is odd while the writer is mid-update (a seqcount).
 */
struct cpu_state {
	__u32 seq;
	__u32 tid;      /* watched vCPU thread running now, 0 if none */
	__u32 vmi;
	__u32 last_tid; /* last watched vCPU thread that ran here */
	__u32 last_vmi;
	__u32 ho_count; /* handovers batched for the pair ho_from/ho_to */
	__u64 start_ns; /* when tid started running here */
	/* A streak of handovers between one pair (two vCPUs of different VMIs
	 * taking turns on this CPU) is counted here and added to the pair map
	 * once, when the streak ends, reaches HANDOVER_BATCH or is older than
	 * HANDOVER_BATCH_NS: a hash update per streak instead of per switch. */
	__u64 ho_from;  /* tid << 32 | vmi */
	__u64 ho_to;
	__u64 ho_start_ns;
};

#define HANDOVER_BATCH 64
#define HANDOVER_BATCH_NS 10000000ULL

/* Linux's PID_MAX_LIMIT on 64-bit: thread ids are below it. */
#define PID_MAX_LIMIT (4 * 1024 * 1024)
/* watched_bits: one bit per possible thread id, set for watched threads, so
 * that a switch to an unwatched thread costs an array read, not a hash
 * lookup. */
#define WATCHED_WORDS (PID_MAX_LIMIT / 64)

#define MAX_PEERS 256
#define PEER_SMT (1U << 0) /* SMT sibling of the same core */
#define PEER_LLC (1U << 1) /* shares the last-level cache */

/* The CPUs that share a core or an LLC with one CPU, from sysfs. cell[i]
 * indexes peer_acct for the pair of this CPU and cpu[i]: both CPUs of a
 * pair name the same cell. */
struct cpu_peers {
	__u32 n;
	__u32 pad;
	__u16 cpu[MAX_PEERS];
	__u8 kind[MAX_PEERS];
	__u32 cell[MAX_PEERS];
};

/* A pair of vCPU threads of different VMIs, tid_a < tid_b. */
struct pair_key {
	__u32 tid_a;
	__u32 tid_b;
};

struct pair_val {
	__u32 vmi_a;
	__u32 vmi_b;
	__u64 smt_ns;    /* both ran at once on SMT siblings of one core */
	__u64 llc_ns;    /* both ran at once on CPUs sharing an LLC (includes smt_ns) */
	__u64 handovers; /* one ran on a CPU right after the other */
};

/* ---- sample aggregation (sampler.bpf.c) ---- */

/* A perf event the agent attached, keyed by its perf event id. */
struct sampler_info {
	__u32 stream; /* the agent's number for the event, e.g. its index */
	__u32 pad;
};

#define MODE_GUEST (1U << 0)  /* the kernel recorded the guest's IP */
#define MODE_KERNEL (1U << 1) /* the IP is a kernel (upper-half) address */
#define MODE_REGS (1U << 2)   /* no PERF_SAMPLE_IP: IP from the interrupted regs */

struct ip_key {
	__u32 tid;
	__u16 stream;
	__u8 mode;
	__u8 pad;
	__u64 bucket; /* ip >> ip_shift */
};

#define TIMELINE_SLOTS 256

struct timeline_key {
	__u32 tid;
	__u32 stream;
};

/*
 * Samples per time slot in a ring: slot[i] holds the slot number (time since
 * load / slot_ns, modulo 2^32) whose samples count[i] counts.
 */
struct timeline {
	__u64 samples;
	__u64 guest_samples;
	__u64 first_ns;
	__u64 last_ns;
	__u32 slot[TIMELINE_SLOTS];
	__u32 count[TIMELINE_SLOTS];
};

#endif /* SIDEWATCH_H */
