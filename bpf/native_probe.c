// Coral native probe: entry uprobe + uretprobe on one function.
//
// One record per entry and per return goes to a BPF ring buffer, submitted
// with BPF_RB_NO_WAKEUP: the agent consumes on a timer, so a hot function
// costs no wake-up per call. Records that do not fit are counted in
// `counters`, so losses are exact.
//
// Compile-time parameters (set by coral/agentd/probes.py):
//   CORAL_RINGBUF_PAGES   ring buffer size in pages (power of two)
//   CORAL_SAMPLE_RATE     report every Nth call (1: all)
//   CORAL_CAPTURE_ARGS    1: copy the six integer argument registers
//   CORAL_CAPTURE_RETURN  1: copy the integer return register
#include <uapi/linux/ptrace.h>

#define CORAL_EVENT_ENTRY 0
#define CORAL_EVENT_RETURN 1

// Indexes into `counters`.
#define CORAL_CALLS 0        // entries seen in the kernel
#define CORAL_LOST_RINGBUF 1 // records dropped: ring buffer full
#define CORAL_SAMPLED_OUT 2  // calls skipped by sampling
#define CORAL_UNPAIRED 3     // returns with no recorded entry
#define CORAL_COUNTERS 4

struct coral_event {
    u64 ts_ns;        // bpf_ktime_get_ns (CLOCK_MONOTONIC)
    u64 duration_ns;  // return records only
    u64 retval;
    u64 args[6];
    u32 pid;
    u32 tid;
    u32 kind;
    u32 flags;
};

BPF_RINGBUF_OUTPUT(events, CORAL_RINGBUF_PAGES);
BPF_HASH(starts, u64, u64, 65536);   // pid_tgid -> entry time
BPF_ARRAY(counters, u64, CORAL_COUNTERS);

static __always_inline u64 bump(int index)
{
    u64 *value = counters.lookup(&index);
    if (!value)
        return 0;
    return __sync_fetch_and_add(value, 1);
}

int coral_entry(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 nth = bump(CORAL_CALLS);
    if (CORAL_SAMPLE_RATE > 1 && nth % CORAL_SAMPLE_RATE != 0) {
        bump(CORAL_SAMPLED_OUT);
        return 0;
    }
    u64 ts = bpf_ktime_get_ns();
    starts.update(&id, &ts);

    struct coral_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        bump(CORAL_LOST_RINGBUF);
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->ts_ns = ts;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->kind = CORAL_EVENT_ENTRY;
#if CORAL_CAPTURE_ARGS
    e->args[0] = PT_REGS_PARM1(ctx);
    e->args[1] = PT_REGS_PARM2(ctx);
    e->args[2] = PT_REGS_PARM3(ctx);
    e->args[3] = PT_REGS_PARM4(ctx);
    e->args[4] = PT_REGS_PARM5(ctx);
    e->args[5] = PT_REGS_PARM6(ctx);
#endif
    events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    return 0;
}

int coral_return(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 *start = starts.lookup(&id);
    if (!start) {
        // Sampled out, or the call began before the probe was attached.
        bump(CORAL_UNPAIRED);
        return 0;
    }
    u64 now = bpf_ktime_get_ns();
    u64 began = *start;
    starts.delete(&id);

    struct coral_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        bump(CORAL_LOST_RINGBUF);
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->ts_ns = now;
    e->duration_ns = now - began;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->kind = CORAL_EVENT_RETURN;
#if CORAL_CAPTURE_RETURN
    e->retval = PT_REGS_RC(ctx);
#endif
    events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    return 0;
}
