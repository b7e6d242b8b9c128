//go:build ignore
// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/*
 * Co-scheduling of vCPU threads of different VMIs, from sched_switch.
 *
 * Each CPU keeps in cpu_state which watched vCPU thread it runs and since
 * when. When a watched thread leaves a CPU, the program walks that CPU's
 * peers (SMT siblings and CPUs sharing its LLC, from sysfs via the loader)
 * and, for every peer running a vCPU of another VMI, adds the time both ran
 * at once to the pair. Every overlap is counted exactly once: by whichever
 * of the two threads is switched out first, while the other still runs.
 * A vCPU of another VMI taking over a CPU right after one ran there is a
 * handover (time-sliced sharing of a core's private caches).
 *
 * The common case, a switch between threads nobody watches, costs a bit
 * test in watched_bits and no writes.
 *
 * Two CPUs often switch at the same instant (their scheduler ticks are
 * aligned): each may then see the other's thread still running and count
 * the same stretch. A per-CPU-pair watermark (peer_acct) says up to when
 * the two CPUs' overlaps have been counted; a CPU claims [from, now) by
 * moving it with a compare-and-swap and counts only what lies after it, so
 * every moment of overlap is counted once.
 */
#include "include/core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "include/sidewatch.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* Options.MaxThreads */
	__type(key, __u32);
	__type(value, struct thread_info);
} threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WATCHED_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} watched_bits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* the loader sets the number of possible CPUs */
	__type(key, __u32);
	__type(value, struct cpu_state);
} cpu_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* possible CPUs */
	__type(key, __u32);
	__type(value, struct cpu_peers);
} cpu_peers SEC(".maps");

/* Per pair of peer CPUs: the time up to which their overlaps are counted. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* the loader sets the number of peer pairs */
	__type(key, __u32);
	__type(value, __u64);
} peer_acct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* Options.MaxPairs */
	__type(key, struct pair_key);
	__type(value, struct pair_val);
} pairs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} cosched_stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&cosched_stats, &idx);
	if (v)
		*v += 1;
}

/*
 * Adds to the pair of threads a (tid<<32 | vmi) and b: amount nanoseconds
 * of overlap of the given peer kinds, or with kind 0, amount handovers.
 * A global function: the verifier checks it once, not once per call site.
 */
__noinline int add_pair(__u64 a, __u64 b, __u64 amount, __u32 kind)
{
	struct pair_key key;
	__u32 vmi_a, vmi_b;

	if ((a >> 32) < (b >> 32)) {
		key.tid_a = a >> 32;
		key.tid_b = b >> 32;
		vmi_a = (__u32)a;
		vmi_b = (__u32)b;
	} else {
		key.tid_a = b >> 32;
		key.tid_b = a >> 32;
		vmi_a = (__u32)b;
		vmi_b = (__u32)a;
	}

	struct pair_val *v = bpf_map_lookup_elem(&pairs, &key);
	if (!v) {
		struct pair_val init = { .vmi_a = vmi_a, .vmi_b = vmi_b };
		long err = bpf_map_update_elem(&pairs, &key, &init, BPF_NOEXIST);
		if (err && err != -EEXIST) {
			stat_inc(STAT_TABLE_FULL);
			return 0;
		}
		v = bpf_map_lookup_elem(&pairs, &key);
		if (!v)
			return 0;
	}
	if (kind & PEER_SMT)
		__sync_fetch_and_add(&v->smt_ns, amount);
	if (kind & PEER_LLC)
		__sync_fetch_and_add(&v->llc_ns, amount);
	if (!kind)
		__sync_fetch_and_add(&v->handovers, amount);
	return 0;
}

static __always_inline bool is_watched(__u32 tid)
{
	__u32 word = tid / 64;
	__u64 *w = bpf_map_lookup_elem(&watched_bits, &word);
	return w && ((*w >> (tid & 63)) & 1);
}

static __always_inline void flush_handovers(struct cpu_state *st)
{
	if (st->ho_count) {
		add_pair(st->ho_from, st->ho_to, st->ho_count, 0);
		st->ho_count = 0;
	}
}

/* Thread to took this CPU over from thread from, of another VMI. */
static __always_inline void handover(struct cpu_state *st, __u64 from, __u64 to, __u64 now)
{
	if (st->ho_count && st->ho_count < HANDOVER_BATCH && now - st->ho_start_ns < HANDOVER_BATCH_NS &&
	    ((st->ho_from == from && st->ho_to == to) || (st->ho_from == to && st->ho_to == from))) {
		st->ho_count++;
		return;
	}
	flush_handovers(st);
	st->ho_from = from;
	st->ho_to = to;
	st->ho_count = 1;
	st->ho_start_ns = now;
}

/* The thread leaving this CPU ran since st->start_ns: add its overlaps. */
static __always_inline void account(struct cpu_state *st, __u32 cpu, __u64 now)
{
	struct cpu_peers *peers = bpf_map_lookup_elem(&cpu_peers, &cpu);
	if (!peers)
		return;
	__u32 n = peers->n;
	__u64 self = ((__u64)st->tid << 32) | st->vmi;
	__u64 start = st->start_ns;
	__u32 vmi = st->vmi;

	for (__u32 i = 0; i < MAX_PEERS; i++) {
		if (i >= n)
			break;
		__u32 pc = peers->cpu[i];
		struct cpu_state *ps = bpf_map_lookup_elem(&cpu_state, &pc);
		if (!ps)
			continue;
		/* A seqcount read: retry-free, skip the peer if it is mid-update. */
		__u32 seq = READ_ONCE(ps->seq);
		if (seq & 1)
			continue;
		barrier();
		__u32 ptid = READ_ONCE(ps->tid);
		__u32 pvmi = READ_ONCE(ps->vmi);
		__u64 pstart = READ_ONCE(ps->start_ns);
		barrier();
		if (READ_ONCE(ps->seq) != seq)
			continue;
		if (!ptid || pvmi == vmi)
			continue;
		__u64 from = start > pstart ? start : pstart;
		if (now <= from)
			continue;
		__u32 cell = peers->cell[i];
		__u64 *until = bpf_map_lookup_elem(&peer_acct, &cell);
		if (!until)
			continue;
		/* Claim [from, now) for this pair of CPUs; a peer switching out
		 * at the same instant claims first or counts only what follows. */
		for (int k = 0; k < 4; k++) {
			__u64 seen = READ_ONCE(*until);
			__u64 lo = from > seen ? from : seen;
			if (now <= lo)
				break;
			if (__sync_val_compare_and_swap(until, seen, now) == seen) {
				add_pair(self, ((__u64)ptid << 32) | pvmi, now - lo, peers->kind[i]);
				break;
			}
		}
	}
}

/*
 * The time of this switch. __schedule has just run update_rq_clock, so the
 * runqueue's clock (sched_clock, ns, the same on every CPU with a stable
 * TSC) is fresh and costs three loads; bpf_ktime_get_ns can cost several
 * times more where reading the TSC is slow (e.g. in a VM). Kernels without
 * CONFIG_FAIR_GROUP_SCHED have no cfs_rq->rq: they use bpf_ktime_get_ns,
 * and then always, so all times here come from one clock.
 */
static __always_inline __u64 switch_time(struct task_struct *prev)
{
	if (bpf_core_field_exists(((struct cfs_rq *)0)->rq)) {
		struct cfs_rq *cfs = prev->se.cfs_rq;
		struct rq *rq = cfs ? cfs->rq : 0;
		return rq ? rq->clock : 0;
	}
	return bpf_ktime_get_ns();
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct cpu_state *st = bpf_map_lookup_elem(&cpu_state, &cpu);
	if (!st)
		return 0;

	__u32 next_tid = next->pid;
	struct thread_info *ti = 0;
	if (next_tid && is_watched(next_tid))
		ti = bpf_map_lookup_elem(&threads, &next_tid);
	/* Nothing watched leaves or enters, and no handover streak is open
	 * (a streak is only open while a watched thread runs here). */
	if (!ti && !st->tid)
		return 0;

	__u64 now = switch_time(prev);
	if (!now)
		return 0; /* no runqueue clock: skip rather than mix clocks */
	if (st->tid)
		account(st, cpu, now);

	__u32 tid = 0, vmi = 0;
	if (ti) {
		tid = next_tid;
		vmi = ti->vmi;
		if (st->last_vmi && st->last_vmi != vmi)
			handover(st, ((__u64)st->last_tid << 32) | st->last_vmi, ((__u64)tid << 32) | vmi, now);
		else
			flush_handovers(st);
	} else {
		flush_handovers(st);
	}

	/* Only this CPU writes its slot; peers read it under the seqcount. */
	WRITE_ONCE(st->seq, st->seq + 1);
	barrier();
	WRITE_ONCE(st->tid, tid);
	WRITE_ONCE(st->vmi, vmi);
	WRITE_ONCE(st->start_ns, now);
	barrier();
	WRITE_ONCE(st->seq, st->seq + 1);
	if (ti) {
		st->last_tid = tid;
		st->last_vmi = vmi;
	}
	return 0;
}
