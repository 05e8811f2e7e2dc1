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
// CORAL_COPY_PAGES, the ring buffer's size in pages; CORAL_PY_THREADS, the
// thread states looked at to find the sampled thread's; CORAL_PY_FRAMES,
// the Python frames read per sample.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>

struct sample_key {
    u32 tgid;
    s32 user_stack;  // an id in `stacks`, or a negative errno when none was taken
};

// PythonLayout (proto/coral/proto/coral.proto), as the agent writes it.
struct py_layout {
    u64 interpreter;
    u32 threads_head, tstate_next, tstate_native_thread_id, tstate_frame;
    u32 cframe_current_frame, via_cframe, frame_code, frame_previous;
    u32 frame_instr, frame_owner, owner_cstack, pad;
};

struct stack_copy {
    u32 tgid;
    s32 user_stack;  // the frame-pointer walk of the same sample (a fallback)
    u64 ip, sp, bp;
    u32 size;        // bytes of `stack` read from sp (0 if none could be)
    u32 user_mode;   // the sample interrupted user code: ip, sp, bp are the user's
    u32 py_depth;    // Python frames read (0: none, or not a Python process)
    u32 py_cut;      // more frames than CORAL_PY_FRAMES were there
    u64 py_code[CORAL_PY_FRAMES];   // code object of each, innermost first (0: a shim frame)
    u64 py_instr[CORAL_PY_FRAMES];  // and its instruction pointer
    u8 stack[CORAL_STACK_COPY];
};

BPF_HASH(targets, u32, u8, 1024);
BPF_HASH(python, u32, struct py_layout, 1024);
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

static inline u64 read_ptr(u64 address)
{
    u64 value = 0;
    if (bpf_probe_read_user(&value, sizeof(value), (void *)address) != 0)
        return 0;
    return value;
}

// The thread state of thread `tid`: the one whose native_thread_id is it.
static inline u64 python_thread(struct py_layout *py, u32 tid)
{
    u64 tstate = read_ptr(py->interpreter + py->threads_head);
    // Loops, not unrolled: the verifier walks their bounded iterations.
#pragma clang loop unroll(disable)
    for (int t = 0; t < CORAL_PY_THREADS; t++) {
        if (!tstate || read_ptr(tstate + py->tstate_native_thread_id) == tid)
            return tstate;
        tstate = read_ptr(tstate + py->tstate_next);
    }
    return 0;  // past the bound
}

// The thread's Python frames into `c`, innermost first. A shim frame (the
// interpreter's, for a C caller: no Python function) is kept with code 0,
// which the agent leaves out: the index never depends on what was read,
// which keeps the verifier's walk of the loop short.
static inline void python_frames(struct stack_copy *c, struct py_layout *py, u32 tid)
{
    u64 tstate = python_thread(py, tid);
    if (!tstate)
        return;  // not a thread the interpreter knows (yet)
    u64 frame = read_ptr(tstate + py->tstate_frame);
    if (py->via_cframe && frame)
        frame = read_ptr(frame + py->cframe_current_frame);
    u32 depth = 0;
#pragma clang loop unroll(disable)
    for (int f = 0; f < CORAL_PY_FRAMES; f++) {
        if (!frame)
            break;
        u8 owner = 0;
        if (py->frame_owner)
            bpf_probe_read_user(&owner, 1, (void *)(frame + py->frame_owner));
        c->py_code[f] = owner == py->owner_cstack ? 0 : read_ptr(frame + py->frame_code);
        c->py_instr[f] = read_ptr(frame + py->frame_instr);
        depth = f + 1;
        frame = read_ptr(frame + py->frame_previous);
    }
    c->py_depth = depth;
    c->py_cut = frame != 0;
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
    int user_mode = (ctx->regs.cs & 3) == 3;  // these registers are the user's
    struct py_layout *py = python.lookup(&tgid);
    if (user_mode || py) {
        struct stack_copy *c = copies.ringbuf_reserve(sizeof(struct stack_copy));
        if (c) {
            c->tgid = tgid;
            c->user_stack = key.user_stack;
            c->user_mode = user_mode;
            c->ip = ctx->regs.ip;
            c->sp = ctx->regs.sp;
            c->bp = ctx->regs.bp;
            c->size = 0;
            c->py_depth = 0;
            c->py_cut = 0;
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
                python_frames(c, py, (u32)bpf_get_current_pid_tgid());
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
