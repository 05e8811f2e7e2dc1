// Coral's sampling profiler: a program of its own (not the probes program,
// bpf/coral_probes.c), compiled for one profile and unloaded when it ends.
//
// It runs on a CPU-clock perf event of every CPU at the asked frequency.
// A sample counts only if the interrupted task belongs to a process being
// profiled (its tgid is in `targets`). Its user stack is taken two ways:
//  - walked by the kernel through frame pointers (`stacks`, an id);
//  - when the sample interrupted user code, the registers the unwinder
//    needs (RIP, RSP, RBP) and a bounded copy of the stack from RSP go to
//    the agent in `copies`, where it unwinds them with the binary's
//    .eh_frame (coral/agentd/unwind.py): right where frame pointers are
//    missing (an -O2 build).
// A sample that is not copied (kernel mode, or the ring buffer full) is
// counted in `counts` under (tgid, stack id).
// It reads nothing of the process but its stack, writes nothing into it,
// and does a bounded amount of work per sample.
//
// Compile-time parameters (coral/agentd/profiler.py): CORAL_PROFILE_STACKS,
// the stack table's size; CORAL_STACK_COPY, the bytes of stack copied;
// CORAL_COPY_PAGES, the ring buffer's size in pages.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>

struct sample_key {
    u32 tgid;
    s32 user_stack;  // an id in `stacks`, or a negative errno when none was taken
};

struct stack_copy {
    u32 tgid;
    s32 user_stack;  // the frame-pointer walk of the same sample (a fallback)
    u64 ip, sp, bp;
    u32 size;        // bytes of `stack` read from sp (0 if none could be)
    u32 pad;
    u8 stack[CORAL_STACK_COPY];
};

BPF_HASH(targets, u32, u8, 1024);
BPF_STACK_TRACE(stacks, CORAL_PROFILE_STACKS);
BPF_HASH(counts, struct sample_key, u64, CORAL_PROFILE_STACKS);
BPF_RINGBUF_OUTPUT(copies, CORAL_COPY_PAGES);
// 0: samples of a target; 1: samples whose frame-pointer stack could not be
// kept (the stack table full, or a hash collision); 2: samples not counted
// (counts full); 3: samples not copied because the ring buffer was full.
BPF_ARRAY(totals, u64, 4);

static inline void add(int index)
{
    u64 *n = totals.lookup(&index);
    if (n)
        __sync_fetch_and_add(n, 1);
}

int coral_profile_sample(struct bpf_perf_event_data *ctx)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == 0 || targets.lookup(&tgid) == NULL)
        return 0;
    add(0);
    struct sample_key key = {.tgid = tgid};
    key.user_stack = stacks.get_stackid(&ctx->regs, BPF_F_USER_STACK);
    if (key.user_stack < 0)
        add(1);
    if ((ctx->regs.cs & 3) == 3) {  // user mode: these registers are the user's
        struct stack_copy *c = copies.ringbuf_reserve(sizeof(struct stack_copy));
        if (c) {
            c->tgid = tgid;
            c->user_stack = key.user_stack;
            c->ip = ctx->regs.ip;
            c->sp = ctx->regs.sp;
            c->bp = ctx->regs.bp;
            c->pad = 0;
            // A read that crosses the top of the stack fails whole: try less.
            if (bpf_probe_read_user(c->stack, CORAL_STACK_COPY, (void *)c->sp) == 0)
                c->size = CORAL_STACK_COPY;
            else if (bpf_probe_read_user(c->stack, 1024, (void *)c->sp) == 0)
                c->size = 1024;
            else if (bpf_probe_read_user(c->stack, 256, (void *)c->sp) == 0)
                c->size = 256;
            else
                c->size = 0;
            copies.ringbuf_submit(c, BPF_RB_NO_WAKEUP);  // the agent polls
            return 0;
        }
        add(3);
    }
    u64 one = 1;
    u64 *count = counts.lookup(&key);
    if (count) {
        __sync_fetch_and_add(count, 1);
    } else if (counts.update(&key, &one) != 0) {
        add(2);
    }
    return 0;
}
