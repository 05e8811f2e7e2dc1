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
// In a Python process whose SDK gave its interpreter's layout (`python`,
// docs/protocol.md "Process registration"), every sample is copied, with
// the sampled thread's Python frames: each frame's code object and
// instruction pointer, innermost first, read by following the layout's
// offsets through the process's own memory. The agent names them.
// It reads nothing of the process but its stack, writes nothing into it,
// and does a bounded amount of work per sample.
//
// Compile-time parameters (coral/agentd/profiler.py): CORAL_PROFILE_STACKS,
// the stack table's size; CORAL_STACK_COPY, the bytes of stack copied;
// CORAL_COPY_PAGES, the ring buffer's size in pages. (The Python frames'
// bounds are bpf/coral_pystack.h's.)

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include "coral_python.h"   // struct py_layout, struct py_stack, python_frames()
#include "coral_profile.h"  // struct stack_copy: the record sent for a sample

struct sample_key {
    u32 tgid;
    s32 user_stack;  // an id in `stacks`, or a negative errno when none was taken
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
    // The user's registers: the sample's own if it interrupted user code;
    // if it interrupted the kernel (a system call, a fault), those the task
    // entered the kernel with, which the kernel keeps at the top of its stack.
    struct pt_regs user = {};
    int user_mode = (ctx->regs.cs & 3) == 3;
    if (user_mode) {
        user.ip = ctx->regs.ip;
        user.sp = ctx->regs.sp;
        user.bp = ctx->regs.bp;
    } else {
        struct pt_regs *entered = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
        if (entered && bpf_probe_read_kernel(&user, sizeof(user), entered) == 0 && (user.cs & 3) == 3)
            user_mode = 1;
    }
    struct py_layout *py = python.lookup(&tgid);
    if (user_mode || py) {
        struct stack_copy *c = copies.ringbuf_reserve(sizeof(struct stack_copy));
        if (c) {
            c->tgid = tgid;
            c->user_stack = key.user_stack;
            c->user_mode = user_mode;
            c->ip = user.ip;
            c->sp = user.sp;
            c->bp = user.bp;
            c->size = 0;
            c->pad = 0;
            c->py.depth = 0;
            c->py.cut = 0;
            // A read that crosses the top of the stack fails whole: try less.
            if (!user_mode)
                c->size = 0;
            else if (bpf_probe_read_user(c->stack, CORAL_STACK_COPY, (void *)c->sp) == 0)
                c->size = CORAL_STACK_COPY;
            else if (bpf_probe_read_user(c->stack, 1024, (void *)c->sp) == 0)
                c->size = 1024;
            else if (bpf_probe_read_user(c->stack, 256, (void *)c->sp) == 0)
                c->size = 256;
            if (py)
                python_frames(&c->py, py, (u32)bpf_get_current_pid_tgid());
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
