//go:build ignore
// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/*
 * In-kernel aggregation of perf overflow samples.
 *
 * Attached to the collector's sampling perf events, this program bins each
 * sample's instruction pointer and time per (thread, stream) in maps and
 * returns 0, which tells perf to drop the sample instead of writing it to the
 * ring buffer: a high sample rate costs a map update, not a user-space
 * wakeup.
 *
 * Which IP: the context is a struct bpf_perf_event_data_kern (regs, data,
 * event). regs are the registers the overflow interrupted. data is the
 * sample perf is about to record; since Linux 6.3 perf fills it (including
 * data->ip under PERF_SAMPLE_IP) before running the program. When the
 * overflow was taken while a vCPU ran in guest mode on hardware KVM, x86
 * perf records the guest's RIP (perf_guest_get_ip) in data->ip while regs
 * are the host's registers in KVM's exit path, so data->ip != regs->ip marks
 * a guest sample.
 * A host sample has data->ip == regs->ip. Events without PERF_SAMPLE_IP, or
 * kernels without perf_sample_data.sample_flags, give regs->ip (MODE_REGS:
 * guest or host unknown).
 */
#include "include/core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "include/sidewatch.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

const volatile __u32 ip_shift = 0;       /* bins are 1 << ip_shift bytes of code */
const volatile __u64 slot_ns = 4000000;  /* width of a timeline slot */
const volatile __u64 base_ns = 0;        /* monotonic time of slot 0 */
const volatile __u32 pass_samples = 0;   /* 1: let perf record the sample too */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192); /* Options.MaxSamplers */
	__type(key, __u64);        /* perf event id (PERF_EVENT_IOC_ID) */
	__type(value, struct sampler_info);
} samplers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* Options.MaxIPBins */
	__type(key, struct ip_key);
	__type(value, __u64);
} ip_bins SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* Options.MaxTimelines */
	__type(key, struct timeline_key);
	__type(value, struct timeline);
} timelines SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sampler_stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&sampler_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline void bin_ip(__u32 tid, __u32 stream, __u8 mode, __u64 ip)
{
	struct ip_key key = {
		.tid = tid,
		.stream = (__u16)stream,
		.mode = mode,
		.bucket = ip >> ip_shift,
	};
	__u64 *n = bpf_map_lookup_elem(&ip_bins, &key);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return;
	}
	__u64 one = 1;
	long err = bpf_map_update_elem(&ip_bins, &key, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		n = bpf_map_lookup_elem(&ip_bins, &key);
		if (n)
			__sync_fetch_and_add(n, 1);
	} else if (err) {
		stat_inc(STAT_TABLE_FULL);
	}
}

static __always_inline void bin_time(__u32 tid, __u32 stream, bool guest, __u64 now)
{
	struct timeline_key key = { .tid = tid, .stream = stream };
	struct timeline *tl = bpf_map_lookup_elem(&timelines, &key);
	if (!tl) {
		/* Too big for the 512-byte stack: start from a zeroed global. */
		static const struct timeline zero;
		long err = bpf_map_update_elem(&timelines, &key, &zero, BPF_NOEXIST);
		if (err && err != -EEXIST) {
			stat_inc(STAT_TIMELINE_FULL);
			return;
		}
		tl = bpf_map_lookup_elem(&timelines, &key);
		if (!tl)
			return;
	}
	__u32 slot = (__u32)((now - base_ns) / slot_ns);
	__u32 i = slot & (TIMELINE_SLOTS - 1);
	/* One thread's samples of one stream come one at a time (perf runs
	 * overflow handling on the thread's CPU and never nests BPF), so the
	 * slot switch needs no lock. */
	if (tl->slot[i] != slot || tl->count[i] == 0) {
		tl->slot[i] = slot;
		tl->count[i] = 1;
	} else {
		tl->count[i] += 1;
	}
	tl->samples += 1;
	if (guest)
		tl->guest_samples += 1;
	if (!tl->first_ns)
		tl->first_ns = now;
	tl->last_ns = now;
}

SEC("perf_event")
int sample(struct bpf_perf_event_data *ctx)
{
	struct bpf_perf_event_data_kern *kctx = (void *)ctx;
	__u64 id = BPF_CORE_READ(kctx, event, id);
	struct sampler_info *si = bpf_map_lookup_elem(&samplers, &id);
	if (!si) {
		stat_inc(STAT_UNKNOWN_EVENT);
		return pass_samples;
	}

	__u64 regs_ip = ctx->regs.ip;
	__u64 ip = regs_ip;
	__u8 mode = MODE_REGS;
	if (bpf_core_field_exists(kctx->data->sample_flags)) {
		struct perf_sample_data *data = BPF_CORE_READ(kctx, data);
		__u64 flags = BPF_CORE_READ(data, sample_flags);
		if (flags & PERF_SAMPLE_IP) {
			ip = BPF_CORE_READ(data, ip);
			mode = ip != regs_ip ? MODE_GUEST : 0;
		}
	}
	if (ip >> 63)
		mode |= MODE_KERNEL;

	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bin_ip(tid, si->stream, mode, ip);
	bin_time(tid, si->stream, mode & MODE_GUEST, bpf_ktime_get_ns());
	return pass_samples;
}
