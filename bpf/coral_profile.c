// Coral's sampling profiler: a program of its own (not the probes program,
// bpf/coral_probes.c), compiled for one profile and unloaded when it ends.
//
// It runs on a CPU-clock perf event of every CPU at the asked frequency.
// A sample counts only if the interrupted task belongs to a process being
// profiled (its tgid is in `targets`); then its user stack, walked by the
// kernel with frame pointers, is counted in `counts` under (tgid, stack id).
// It reads nothing of the process but its stack, writes nothing into it,
// and does a bounded amount of work per sample.
//
// Compile-time parameter (coral/agentd/profiler.py): CORAL_PROFILE_STACKS,
// the stack table's size.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>

struct sample_key {
    u32 tgid;
    s32 user_stack;  // an id in `stacks`, or a negative errno when none was taken
};

BPF_HASH(targets, u32, u8, 1024);
BPF_STACK_TRACE(stacks, CORAL_PROFILE_STACKS);
BPF_HASH(counts, struct sample_key, u64, CORAL_PROFILE_STACKS);
// 0: samples of a target; 1: samples whose stack could not be kept
// (the stack table full, or a hash collision); 2: samples not counted (counts full).
BPF_ARRAY(totals, u64, 3);

int coral_profile_sample(struct bpf_perf_event_data *ctx)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == 0 || targets.lookup(&tgid) == NULL)
        return 0;
    int zero = 0, dropped = 1, full = 2;
    u64 *n = totals.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    struct sample_key key = {.tgid = tgid};
    key.user_stack = stacks.get_stackid(&ctx->regs, BPF_F_USER_STACK);
    if (key.user_stack < 0) {
        u64 *d = totals.lookup(&dropped);
        if (d)
            __sync_fetch_and_add(d, 1);
    }
    u64 one = 1;
    u64 *count = counts.lookup(&key);
    if (count) {
        __sync_fetch_and_add(count, 1);
    } else if (counts.update(&key, &one) != 0) {
        u64 *f = totals.lookup(&full);
        if (f)
            __sync_fetch_and_add(f, 1);
    }
    return 0;
}
