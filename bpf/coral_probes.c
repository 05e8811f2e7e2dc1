// Coral's BPF program: loaded once per agent, shared by every session.
//
// A session owns a *slot* (0..63). Where to probe is in `sites`, an array
// indexed by the probe's attach cookie (bpf_get_attach_cookie: the agent
// gives each site, a process's probed instruction, an index of its own);
// each site carries the mask of slots watching it. What a slot wants (sampling, filters,
// captures) is in `slots`. Attaching a session therefore compiles nothing:
// the agent attaches uprobes (refcounted) and writes maps.
//
// Calls are paired on a per-thread stack of frames (per goroutine for Go,
// keyed by the g pointer in R14, because goroutines move between threads
// and their stacks move in memory). A stack holds its top CORAL_RING_FRAMES
// frames itself; frames below them (deep recursion) are spilled to
// `deep_frames`, shared by all threads, and brought back as the calls
// above them return. A thread pays for the depth it really uses, up to
// CORAL_MAX_DEPTH frames; an entry deeper than that is counted per session
// (by_slots) and not tracked. One record per completed call goes to
// the ring buffer, submitted with BPF_RB_NO_WAKEUP: the agent drains on a
// timer. Every call is counted and put in the slot's histogram before
// sampling and filters, so the summary covers all calls; every record that
// does not reach the agent is counted by cause.
//
// Three programs take the hits: coral_hit (native entries, RETs and tail
// JMPs), coral_return (uretprobes) and coral_python (the SDK's site in a
// Python process). Each is verified on its own: the verifier walks every
// loop over slots once per slot, and coral_hit is near its limit of a
// million instructions (tail-called programs do the rest: coral_where,
// coral_count, coral_stack).
//
// A session may have a CPU budget: each hit's cost (trap_cost: what the
// agent measured a hit to cost, the trap and this program together) is
// charged to every slot it served that has one (trap_cost's mask), summed
// over all CPUs in a fixed window of CORAL_BUDGET_WINDOW_NS. A slot that
// spends more than its limit in a window is marked in `stopped`, which the
// program checks first thing: from then on it records nothing, and the
// agent detaches the session as failed (budget exceeded).
//
// Compile-time parameters (coral/agentd/engine.py): CORAL_RINGBUF_PAGES, CORAL_STR_MAX,
// CORAL_MAX_DEPTH, CORAL_DEEP_FRAMES ([sessions] max_call_depth, deep_frames), and every constant this program shares with Python (engine.bpf_constants(), defined
// there only), used here under the same names:
//   CORAL_MAX_SLOTS, CORAL_SITES (entries of `sites`), CORAL_HIST_BUCKETS, CORAL_HIST_SUB_BITS (sub-buckets per power of two,
//     coral/histogram.py), CORAL_STATS (counters per slot)
//   SITE_ENTRY (first instruction of a function), SITE_GO (... of a Go function: frames
//     keyed by goroutine), SITE_GO_RET (a RET of a Go function), SITE_PYTHON (the SDK's site),
//     SITE_RET (a RET of a native function probed without a uretprobe: C++, Rust), SITE_TAIL
//     (a JMP of such a function to another function: the call leaves, counted as BY_TAIL_CALL),
//     SITE_URET (an entry whose return is a uretprobe: at most CORAL_URETPROBE_DEPTH deep)
//   ST_CALLS (completed calls seen in the kernel), ST_SAMPLED, ST_FILTERED (min duration or
//     a --where condition that does not hold), ST_RINGBUF (ring buffer full), ST_EMITTED (records submitted), ST_MAX_NS,
//     ST_SUM_NS, ST_UNREADABLE (the process's record could not be read), ST_EXPIRED
//     (returned after the session's expiry: in no count), ST_WHERE_ERROR (--where could not be
//     evaluated: a value the condition needs could not be read; Python: the SDK flags the record), ST_RATE
//     (over the slot's --rate in its second: rate_allows); calls that left without returning
//     (an exception, a panic, longjmp) are counted in unwound_by_slots
//   G_STACK_FULL (entries not tracked: deeper than CORAL_MAX_DEPTH, or deep_frames full), G_UNPAIRED (returns with no
//     matching entry), G_STALE (frames dropped: their call left without returning),
//     G_UNWOUND_UNCOUNTED (such frames, or too deep entries, not counted for their sessions:
//     by_slots is full), G_DEEP_IN_USE (frames in deep_frames: spilled minus taken back),
//     G_UNWOUND_LOST (calls that left by unwinding not kept for an --errors-only session: unwound_calls full)
//   CORAL_UNWOUND_CALLS (entries of unwound_calls), HELD_UNWOUND (a bit of struct site.held: below)
//   BY_UNWOUND, BY_TOO_DEEP, BY_TAIL_CALL (causes in by_slots)
//   EV_NATIVE, EV_PYTHON, EV_PYTHON_TIMING (a Python call with only its timing to show),
//     EV_NATIVE_TIMING (likewise, native), EV_NATIVE_GO (a Go call's record with values)
//   WHERE_MAX_TERMS, WHERE_MAX_CODE, WHERE_STR, W_* and WK_* (a --where condition as data:
//     coral/agentd/where_native.py); ST_WHERE_ERROR (a value the condition reads could not be read)
//   UNREAD_STACK (native_event.unread: a Go call's stack arguments were not copied)
//   UNREAD_STACK_RET (native_event.unread: a Go call's stack results could not be read at its RET)
//   CAPTURE_COUNT_ONLY, COUNT_*, CB_*, ROW_*, STR_* (--count-by: coral/agentd/countby.py)
#include <uapi/linux/ptrace.h>
#include "coral_records.h"            // the ring buffer's records (and struct coral_call)
#include "coral_python.h"             // --stack in a Python process: the Python frames above the call

#if !defined(CORAL_STATS) || !defined(G_DEEP_IN_USE) || !defined(BY_TAIL_CALL) || !defined(SITE_URET) || !defined(CORAL_MAX_DEPTH) || !defined(SITE_RET) || !defined(W_NONEMPTY) || !defined(ST_WHERE_ERROR) || !defined(EV_NATIVE_TIMING) || !defined(EV_NATIVE_GO) || !defined(UNREAD_STACK) || !defined(UNREAD_STACK_RET) || !defined(COUNT_ROWS) || !defined(EV_STACK_COPY) || !defined(G_UNWOUND_LOST) || !defined(HELD_UNWOUND) || !defined(CORAL_UNWOUND_CALLS) || !defined(CORAL_SITES)
#error "compile through coral/agentd/engine.py, which defines the constants shared with Python"
#endif

#define CORAL_RING_FRAMES 8          // frames a stack holds itself: a power of two
#define RING(d) ((d) & (CORAL_RING_FRAMES - 1))
#define CORAL_DROP_MAX 64            // dead frames one return drops before it looks further
#define CORAL_BUDGET_WINDOW_NS 1000000000ULL

// sites[i] is the site whose probes carry cookie i. The agent gives an
// index again only once every probe that carried it is closed, so a late
// hit never reads another site's; an index in no use is all zeroes (no
// slot watches it). Index 0 is never given.
struct site {
    u64 slots;                       // bit i: slot i watches this site
    u64 func_ip;                     // entry address of the function (Go RET sites)
    u32 flags;
    u32 held;                        // strings held in objects: HELD_ARGS_SLOT, HELD_RESULT_SLOT (engine.py)
    u32 where;                       // slots (plus one; 0: none) with a --where condition, 8 bits each: WHERE_SLOTS
    u32 count_by;                    // the slot (plus one; 0: none) with a --count-by key: struct count_by
    u32 tgid;                        // the process: a hit in another one sharing its memory (vfork's child) is not ours
    u32 pad;
};

// struct site.held, and struct frame.held from it: a slot (plus one; 0:
// none) watching the function whose config says which arguments hold
// strings (to copy at the entry), and one whose config says the result
// does. Every such slot of one function wants the same (they follow from its
// DWARF), so the agent names one and the program need not look through all.
#define HELD_ARGS_SLOT(h) ((h) & 0xff)
#define HELD_RESULT_SLOT(h) (((h) >> 8) & 0xff)
#define HELD_COPIED 0x10000          // frame.held: the arguments' strings were copied at the entry (entry_strings)
#define HELD_STACK 0x20000           // frame.held: the stack arguments were copied at the entry (stack_args)
// HELD_UNWOUND (engine.py): site.held, frame.held: a slot watching wants the call if it leaves by unwinding (unwound_calls)

// A string an object holds (a C++ std::string, a Rust String): the register
// holds the object's address; its data pointer and its length (64 bits)
// are members at these offsets (from DWARF: coral/dwarftypes.py).
struct held_string {
    s32 reg;                         // -1: none
    u32 data_off;
    u32 len_off;
    u32 deref;                       // Go held_ret: reg holds an object's address (an error's data word), not the
                                     // string's pointer: the string is the one at data_off, len_off in that object
};

struct slot_config {
    u32 sample_rate;                 // report every Nth call; 0/1: all
    u32 capture;                     // bit0 args, bit1 return, CAPTURE_COUNT_ONLY: --count-by (no records)
    u64 min_duration_ns;
    u64 fn_id;                       // Python: the armed function's id
    s32 str_arg[2];                  // native: args read as C strings (-1: none), into strs[0], strs[1]
    s32 str_ret;                     // native: the result register read as a string (-1: none) ...
    u32 str_ret_at;                  // ... into strs[str_ret_at]: the first one no argument uses
    s32 blob_arg;                    // native: an argument pointing to a struct (-1: none): blob_len
    u32 blob_len;                    // bytes of it are copied at the return ...
    u32 blob_at;                     // ... into strs[blob_at], after the string arguments' slots
    u32 rate_per_s;                  // --rate: at most this many records a second (0: no limit)
    struct held_string held[2];      // native: arguments holding strings, copied at the entry into strs[0], strs[1]
                                     // (Go: reg CORAL_FROM_STACK, a string or []byte in the stack arguments)
    struct held_string held_ret;     // native: the result register holds such an object's address: into strs[str_ret_at]
                                     // (Go: reg is where the string's pointer is: go_result_pointer)
    u32 held_mask;                   // bit i: held[i] is used
    u32 stack_len;                   // bytes of stack-assigned arguments copied at the entry (into stack)
    u32 ret_stack_off;               // Go: where the stack-assigned results begin, after the stack arguments ...
    u32 ret_stack_len;               // ... and how many of their bytes are copied at the RET (into stack_ret)
    u64 expires_ns;                  // bpf_ktime_get_ns() after which nothing is counted (0: never)
    u32 stack;                       // --stack: 0, STACK_WALK (frame pointers) or STACK_COPY (.eh_frame, in the agent)
    u32 stack_bytes;                 // STACK_COPY: bytes of stack copied (at most CORAL_STACK_COPY)
};

struct frame {
    u64 ts;
    u64 sp;                          // where the return address sits: see frame_sp()
    u64 func_ip;
    u64 slots;
    u64 args[CORAL_ARG_REGS];
    u32 at;                          // the stack's `changes` once this frame was pushed
    u32 held;                        // the site's `held`, and HELD_COPIED if the entry copied strings (entry_strings)
    u32 where;                       // the site's `where`
    u32 count_by;                    // the site's `count_by`
};

// frames[RING(d)] is frame d for the top min(depth, CORAL_RING_FRAMES) ones;
// frame d below them is in deep_frames under (thread, d).
struct stack {
    u32 depth;
    u32 changes;                     // pushes and pops so far (wraps): was the top frame the last change?
    u64 id;                          // native: the thread's pid_tgid, asked when the stack was made (thread_id)
    struct frame frames[CORAL_RING_FRAMES];
};

struct thread_key {
    u64 id;                          // pid_tgid (native) or tgid (Go)
    u64 g;                           // goroutine pointer (Go), else 0
};

struct deep_key {
    struct thread_key thread;
    u64 depth;
};

struct budget {
    u64 limit_ns;                    // per window, all CPUs together; 0: no budget
    u64 window_start;
    u64 spent_ns;
};

BPF_RINGBUF_OUTPUT(events, CORAL_RINGBUF_PAGES);
BPF_ARRAY(sites, struct site, CORAL_SITES);
BPF_ARRAY(slots, struct slot_config, CORAL_MAX_SLOTS);
// A slot's counters (ST_*), per CPU: no atomic operations on the hot path
// (the agent sums them), and one lookup a call for all of them. The
// histogram is apart: in the struct, its variable index made the verifier
// walk of coral_hit longer than it takes.
struct slot_counts {
    u64 stats[CORAL_STATS];
};
BPF_PERCPU_ARRAY(counts, struct slot_counts, CORAL_MAX_SLOTS);
BPF_PERCPU_ARRAY(hist, u64, CORAL_MAX_SLOTS * CORAL_HIST_BUCKETS);
BPF_PERCPU_ARRAY(globals, u64, 7);
// Sampling needs one global order of calls: an atomic counter, only when sampling.
BPF_ARRAY(sample_counts, u64, CORAL_MAX_SLOTS);
// --rate: the second (since boot) a slot's window is in, in the high 32
// bits, and the records it let through in that second, in the low 32: one
// word, so that a new second and the first record in it are one atomic step.
BPF_ARRAY(rate_windows, u64, CORAL_MAX_SLOTS);
// A native thread's frames live in its task's own storage: found without
// hashing (about 30 ns less a hit than the LRU here), allocated when the
// thread first enters a probed function, freed by the kernel when it ends.
BPF_TASK_STORAGE(thread_stacks, struct stack);
// A goroutine's frames, keyed by (tgid, g): they stay allocated between
// calls (no insert and delete per call); goroutines that are gone are
// evicted when the map is full.
BPF_TABLE("lru_hash", struct thread_key, struct stack, stacks, 65536);
BPF_PERCPU_ARRAY(empty_stack, struct stack, 1);

// The frames of this thread (native) or of the goroutine `tk` names (Go),
// created if `create`. `go` is a constant at each call: each copy uses one map.
static __always_inline struct stack *stack_of(struct thread_key *tk, int go, int create)
{
    if (!go)
        return thread_stacks.task_storage_get(bpf_get_current_task_btf(), 0,
                                              create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
    struct stack *st = stacks.lookup(tk);
    if (st || !create)
        return st;
    u32 zero = 0;
    struct stack *empty = empty_stack.lookup(&zero);
    if (!empty)
        return 0;
    stacks.update(tk, empty);
    return stacks.lookup(tk);
}
// Preallocated, CORAL_DEEP_FRAMES for all threads together: not an LRU, which
// would evict a live thread's outer frames. A thread that ends deep leaves
// its spilled frames; the same thread key overwrites them, and the agent
// deletes those of processes that have exited (G_DEEP_IN_USE says when).
BPF_HASH(deep_frames, struct deep_key, struct frame, CORAL_DEEP_FRAMES);
BPF_ARRAY(budgets, struct budget, CORAL_MAX_SLOTS);
// Bit i: slot i went over its budget and records nothing more. One lookup
// per hit, before anything else is done.
BPF_ARRAY(stopped, u64, 1);

// The site this probe was attached for (an array lookup: inlined by the verifier).
static __always_inline struct site *site_of(struct pt_regs *ctx)
{
    u32 index = bpf_get_attach_cookie(ctx);
    return sites.lookup(&index);
}
// What charge() needs, in one lookup: what a hit costs (the trap into the
// kernel and back, and this program), in ns, measured by the agent at
// start-up (ProbeEngine.calibrate); and the slots that have a budget (bit
// i: budgets[i].limit_ns is not 0), so that a hit serving none of them
// charges nothing without looking at any budget.
struct charging {
    u64 trap_ns;
    u64 budgeted;
};
BPF_ARRAY(trap_cost, struct charging, 1);

static __always_inline u64 stopped_slots(void)
{
    u32 zero = 0;
    u64 *mask = stopped.lookup(&zero);
    return mask ? *mask : 0;
}

// Charge one hit, at `now`, to the slots in `mask` that have a budget. A
// hit reads the clock once (bpf_ktime_get_ns costs about 55 ns here, a
// tenth of a whole hit's work in this program): its cost is the agent's
// measure of a hit, not timed again.
static __always_inline void charge(u64 mask, u64 now)
{
    if (!mask)
        return;
    u32 zero = 0;
    struct charging *c = trap_cost.lookup(&zero);
    u64 cost = c ? c->trap_ns : 0;
    mask &= c ? c->budgeted : 0;  // the loop ends at once if no slot it served has a budget
    for (u32 slot = 0; slot < CORAL_MAX_SLOTS; slot++) {
        if (!(mask >> slot))
            break;
        if (!(mask & (1ULL << slot)))
            continue;
        u32 key = slot;
        struct budget *b = budgets.lookup(&key);
        if (!b || !b->limit_ns)
            continue;
        if (now - b->window_start >= CORAL_BUDGET_WINDOW_NS) {
            // A new window. CPUs racing here may lose a few hits' charge: the
            // budget is a guard against millions of hits, not an account.
            b->window_start = now;
            b->spent_ns = 0;
        }
        __sync_fetch_and_add(&b->spent_ns, cost);
        if (b->spent_ns > b->limit_ns) {
            u32 zero = 0;
            u64 *stop = stopped.lookup(&zero);
            if (stop)
                __sync_fetch_and_or(stop, 1ULL << slot);
        }
    }
}

static __always_inline void bump_global(u32 which)
{
    u64 *value = globals.lookup(&which);
    if (value)
        *value += 1;
}

static __always_inline u32 log2_u64(u64 v)
{
    u32 r, shift;
    r = (v > 0xFFFFFFFFULL) << 5; v >>= r;
    shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
    shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
    shift = (v > 0xF) << 2; v >>= shift; r |= shift;
    shift = (v > 0x3) << 1; v >>= shift; r |= shift;
    r |= (v >> 1);
    return r;
}

// Log-linear buckets: values below 8 have their own; above, each power of
// two is split in 8 (relative width 12.5%). coral/histogram.py
// mirrors this to turn buckets back into nanoseconds.
static __always_inline u32 hist_bucket(u64 ns)
{
    if (ns < (1 << CORAL_HIST_SUB_BITS))
        return (u32)ns;
    u32 msb = log2_u64(ns);
    u32 sub = (ns >> (msb - CORAL_HIST_SUB_BITS)) & ((1 << CORAL_HIST_SUB_BITS) - 1);
    return (msb << CORAL_HIST_SUB_BITS) + sub;
}

// args[i] for an index a config names (-1: none); 0 out of range. The
// verifier wants the bound checked on the index the load uses.
static __always_inline u64 arg_at(u64 *args, s32 i)
{
    u32 k = (u32)i;
    if (k >= CORAL_ARG_REGS)
        return 0;
    return args[k];
}

// --rate: may this call be reported, in one-second windows of at most
// `limit` records? A call that finds the window of an earlier second starts
// its own (compare-and-swap: one of the CPUs that find it old does); the
// others take a place in the current one. A place taken in a window that is
// not the call's own second (an older one, or a newer one that another CPU
// started while this one read the clock) is refused: the limit is never
// exceeded, and the calls refused are counted (ST_RATE).
static __always_inline int rate_allows(u32 slot, u32 limit)
{
    u64 *window = rate_windows.lookup(&slot);
    if (!window)
        return 1;
    // The clock read again here, not the hit's `now` divided: clang hoists a
    // division of `now` out of the slots' loop, into every hit with or
    // without --rate (some 20 ns a return); a helper call it cannot move.
    u64 second = bpf_ktime_get_ns() / 1000000000ULL, seen = *window;
    if (seen >> 32 < second && __sync_val_compare_and_swap(window, seen, second << 32 | 1) == seen)
        return 1;
    u64 before = __sync_fetch_and_add(window, 1);
    return before >> 32 == second && (u32)before < limit;
}

// Count the call for the slot and decide whether to report it.
// `rejected` and `unread`: bit per slot, the --where condition does not hold,
// or could not be evaluated (where_at_return).
// `c`: the slot's counts on this CPU.
static __always_inline int account(u32 slot, struct slot_counts *c, struct slot_config *cfg, u64 now, u64 duration,
                                   u64 rejected, u64 unread)
{
    // The session's end is kept here, not only by the agent: a call that
    // returns after it is in no count, however late the agent detaches.
    if (cfg->expires_ns && now > cfg->expires_ns) {
        c->stats[ST_EXPIRED] += 1;
        return 0;
    }
    c->stats[ST_CALLS] += 1;
    u32 index = slot * CORAL_HIST_BUCKETS + (hist_bucket(duration) & (CORAL_HIST_BUCKETS - 1));
    u64 *bucket = hist.lookup(&index);
    if (bucket)
        *bucket += 1;
    c->stats[ST_SUM_NS] += duration;
    if (duration > c->stats[ST_MAX_NS])
        c->stats[ST_MAX_NS] = duration;

    if (cfg->sample_rate > 1) {
        u64 *count = sample_counts.lookup(&slot);
        u64 nth = count ? __sync_fetch_and_add(count, 1) : 0;
        if (nth % cfg->sample_rate != 0) {
            c->stats[ST_SAMPLED] += 1;
            return 0;
        }
    }
    // A call the condition rejects is filtered as one under --min-duration,
    // without a branch of its own: the loops over slots this runs in are
    // walked by the verifier once for every slot.
    u64 no = (rejected | unread) >> (slot & 63) & 1, error = unread >> (slot & 63) & 1;
    if (duration < (cfg->min_duration_ns | no * ~0ULL)) {
        c->stats[ST_FILTERED + (u32)error * (ST_WHERE_ERROR - ST_FILTERED)] += 1;
        return 0;
    }
    if (cfg->rate_per_s && !rate_allows(slot, cfg->rate_per_s)) {
        c->stats[ST_RATE] += 1;
        return 0;
    }
    return 1;
}

// --- --where: a condition as data ------------------------------------------
//
// coral/agentd/where_native.py turns a session's condition into terms (one
// test each: which value, how to read it, what to compare it with) and a
// postfix code joining their answers with and, or, not. The terms on
// arguments (and the fields and strings they lead to) are answered at the
// entry; the others (ret, err, duration: integers, at most
// WHERE_RETURN_TERMS) at the return. So that the return does almost
// nothing, the entry runs the code for every combination of the return
// terms' answers at once (one bit each of a 16-bit vector), and keeps the
// resulting table per call and slot in where_entries; the return computes
// its few comparisons and looks its answer up in the table. A condition
// with no entry terms has its table worked out by the agent. The entry's
// work is a program of its own (coral_where, tail-called by coral_hit),
// verified apart from coral_hit, which is near the verifier's limits. At
// most WHERE_SLOTS conditions a function are evaluated (the site names
// them, as it names `held`).
//
// A value that cannot be read (a null or unmapped pointer) is *unread*:
// and, or and not keep it unread unless the other side decides alone
// (false && x, true || x); a condition left unread is false and counted
// ST_WHERE_ERROR.
struct where_term {
    u8 when;                         // W_ENTRY, W_RETURN, W_DURATION
    u8 kind;                         // WK_INT, WK_CSTR, WK_PAIR (pointer and length registers), WK_HELD
    u8 op;                           // W_LT, W_GT, W_EQ (integers); W_SEQ, W_PREFIX, W_NONEMPTY (strings)
    u8 negate;                       // the answer is the opposite (>= is !<, != is !==)
    u8 width;                        // WK_INT: bytes of the value
    u8 is_signed;
    u8 reg;                          // index into the arguments' (entry) or results' (return) registers
    u8 len_reg;                      // WK_PAIR: the length's register
    u8 deref;                        // the value is at `offset` in what the register points to (a field)
    u8 pad[3];
    u32 offset;                      // deref: the field's offset; WK_HELD: the data pointer's in the object
    u32 len_off;                     // WK_HELD: the length's offset in the object
    u32 text_len;                    // strings: the constant's length
    s64 value;                       // WK_INT: the constant
    u64 text[WHERE_STR / 8];         // strings: the constant, zero-padded
    u64 mask[WHERE_STR / 8];         // strings: the bytes of each word of text that are the constant's
};

// One join: value dst = a and b, a or b, or not a (the mask of the one it is: 0xFFFF; the others 0).
struct where_op {
    u8 a;
    u8 b;
    u8 dst;
    u8 pad;
    u16 and_mask;
    u16 or_mask;
    u16 not_mask;
    u16 pad2;
};

struct where_prog {
    u32 n_terms;
    u32 n_code;
    u32 entry_mask;                  // bit i: term i is answered at the entry
    u32 table;                       // no entry terms: the answers (bits 0-15) and unread (16-31) by return bits
    u8 ret_terms[WHERE_RETURN_TERMS];// the return terms (term index; 0xff: none): bit j of the return bits
    u32 result;                      // the value that is the condition's answer (where_table)
    struct where_op code[WHERE_MAX_CODE];
    struct where_term terms[WHERE_MAX_TERMS];
};

BPF_ARRAY(wheres, struct where_prog, CORAL_MAX_SLOTS);

struct where_key {
    u64 id;                          // struct thread_key: per thread (native) or goroutine (Go)
    u64 g;
    u64 sp;                          // the frame's sp
    u64 slot;
};

// A call that never returns (an exception, a panic) leaves its table to the LRU.
BPF_TABLE("lru_hash", struct where_key, u32, where_entries, 16384);

// The entry's scratch, per CPU: one string to compare, and the code's stack.
struct where_scratch {
    u64 words[WHERE_STR / 8 + 1];    // WHERE_STR bytes and a C string's NUL
    u32 value[WHERE_VALUES];         // answers by combination of the return terms (where_table) ...
    u32 unread[WHERE_VALUES];        // ... and which are unread
    u32 truth;                       // bit i: entry term i holds
    u32 unread_terms;                // bit i: entry term i could not be read
};
BPF_PERCPU_ARRAY(where_scratches, struct where_scratch, 1);

// Which comparison holds: no branch on the operator but one.
static __always_inline u32 where_compare(struct where_term *t, u64 raw)
{
    u32 width = t->width & 15;
    if (width == 0 || width > 8)
        width = 8;
    u32 shift = 64 - 8 * width;      // the register's upper bits are not part of the value
    u64 v = (raw << shift) >> shift, c = (u64)t->value;
    if (t->is_signed) {
        v = (u64)((s64)(raw << shift) >> shift);
        v ^= 1ULL << 63;             // signed order as unsigned order
        c ^= 1ULL << 63;
    }
    u32 holds = t->op == W_EQ ? v == c : t->op == W_LT ? v < c : v > c;
    return holds ^ (t->negate & 1);
}

// The first text_len bytes of `s` are the constant's: word by word under
// masks the agent worked out from the constant's length (no branches).
static __always_inline u32 where_same_start(struct where_scratch *s, struct where_term *t)
{
    u64 diff = 0;
#pragma unroll
    for (u32 i = 0; i < WHERE_STR / 8; i++)
        diff |= (s->words[i] ^ t->text[i]) & t->mask[i];
    return diff == 0;
}

// 1, 0, or -1: unread.
static __always_inline int where_string(struct where_term *t, u64 *regs, struct where_scratch *s)
{
    u64 ptr = regs[t->reg & 7], len = 0;
    u32 want = t->text_len;
    if (want > WHERE_STR)
        want = WHERE_STR;
    if (t->kind == WK_CSTR) {
        if (t->deref && (!ptr || bpf_probe_read_user(&ptr, sizeof(ptr), (void *)(ptr + t->offset)) < 0))
            return -1;
        if (!ptr)
            return t->op == W_NONEMPTY ? (int)(t->negate & 1) : -1;  // NULL: empty, but no text to compare
        long n = bpf_probe_read_user_str(s->words, WHERE_STR + 1, (void *)ptr);
        if (n <= 0)
            return -1;
        len = n - 1;
    } else {
        if (t->kind == WK_PAIR) {
            len = regs[t->len_reg & 7];
        } else {  // WK_HELD: the register holds the object's address
            u64 obj = ptr;
            if (!obj || bpf_probe_read_user(&ptr, sizeof(ptr), (void *)(obj + t->offset)) < 0 ||
                bpf_probe_read_user(&len, sizeof(len), (void *)(obj + t->len_off)) < 0)
                return -1;
        }
        // Only the constant's length need be read: a shorter string neither equals nor starts with it.
        if (t->op != W_NONEMPTY && len >= want && want &&
            (!ptr || bpf_probe_read_user(s->words, want, (void *)ptr) < 0))
            return -1;
    }
    u32 holds = t->op == W_NONEMPTY ? len > 0 :
                t->op == W_PREFIX ? len >= want && where_same_start(s, t) :
                len == want && where_same_start(s, t);
    return holds ^ (t->negate & 1);
}

// A term read at the entry: 1, 0, or -1 (unread).
static __always_inline int where_entry_term(struct where_term *t, u64 *regs, struct where_scratch *s)
{
    if (t->kind != WK_INT)
        return where_string(t, regs, s);
    u64 raw = regs[t->reg & 7];
    if (t->deref) {
        u64 base = raw;
        u32 n = t->width & 15;
        if (n > 8)
            n = 8;
        raw = 0;
        if (!base || bpf_probe_read_user(&raw, n, (void *)(base + t->offset)) < 0)
            return -1;
    }
    return where_compare(t, raw);
}

// The bits of return term j across the 16 combinations of the return terms' answers.
#define WHERE_RET_PATTERN(j) ((j) == 0 ? 0xAAAAU : (j) == 1 ? 0xCCCCU : (j) == 2 ? 0xF0F0U : 0xFF00U)

// At the entry: answer the entry terms of one condition, run its code for
// every combination of the return terms, and return the table (answers in
// bits 0-15, unread in 16-31, by the return terms' bits).
static __always_inline u32 where_table(struct where_prog *p, u64 *regs, struct where_scratch *s)
{
    // The answers are kept in the scratch map, not in registers: each path
    // through a term would otherwise leave a different constant there, and
    // the verifier could not merge them (3 to the power of 16 paths).
    s->truth = 0;
    s->unread_terms = 0;
    u32 n = p->n_terms;
    for (u32 i = 0; i < WHERE_MAX_TERMS; i++) {
        if (i >= n)
            break;
        u32 at = i;
        asm volatile("" : "+r"(at));  // bounded here, where the verifier sees it: clang would drop the mask
        struct where_term *t = &p->terms[at & (WHERE_MAX_TERMS - 1)];
        if (t->when != W_ENTRY)
            continue;
        int h = where_entry_term(t, regs, s);
        if (h < 0)
            s->unread_terms |= 1U << i;
        else if (h)
            s->truth |= 1U << i;
    }
    u32 truth = s->truth, unread = s->unread_terms;
    // The values: 0-15 the entry terms' answers, WHERE_PUSH_RET + j return
    // term j's in every combination, then what each join computes; each a
    // vector of 16 answers and 16 unread bits. The joins select their
    // result with masks (no branch on the operator: cheap to verify).
#pragma unroll
    for (u32 i = 0; i < WHERE_MAX_TERMS; i++) {
        s->value[i] = (truth >> i & 1) * 0xFFFFU;  // not -(bit): the verifier would walk both values
        s->unread[i] = (unread >> i & 1) * 0xFFFFU;
    }
#pragma unroll
    for (u32 j = 0; j < WHERE_RETURN_TERMS; j++) {
        s->value[WHERE_PUSH_RET + j] = WHERE_RET_PATTERN(j);
        s->unread[WHERE_PUSH_RET + j] = 0;
    }
    n = p->n_code;
    for (u32 i = 0; i < WHERE_MAX_CODE; i++) {
        if (i >= n)
            break;
        u32 at = i;
        asm volatile("" : "+r"(at));
        struct where_op *op = &p->code[at & (WHERE_MAX_CODE - 1)];
        u32 a = s->value[op->a & (WHERE_VALUES - 1)], ua = s->unread[op->a & (WHERE_VALUES - 1)];
        u32 b = s->value[op->b & (WHERE_VALUES - 1)], ub = s->unread[op->b & (WHERE_VALUES - 1)];
        u32 false_side = (~a & ~ua) | (~b & ~ub), true_side = (a & ~ua) | (b & ~ub), either = ua | ub;
        u32 res = (a & b & ~ua & ~ub & op->and_mask) | (true_side & op->or_mask) | (~a & ~ua & op->not_mask);
        u32 unr = (~false_side & either & op->and_mask) | (~true_side & either & op->or_mask) | (ua & op->not_mask);
        s->value[op->dst & (WHERE_VALUES - 1)] = res & 0xFFFFU;
        s->unread[op->dst & (WHERE_VALUES - 1)] = unr & 0xFFFFU;
    }
    u32 result = p->result & (WHERE_VALUES - 1);
    return (s->value[result] & 0xFFFFU) | s->unread[result] << 16;
}

// Tail-called by coral_hit at an entry whose site names conditions: their tables, kept for the return.
int coral_where(struct pt_regs *ctx)
{
    struct site *site = site_of(ctx);  // a tail call keeps the hit's ctx, and so its cookie
    if (!site)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 zero = 0;
    struct where_scratch *s = where_scratches.lookup(&zero);
    if (!s)
        return 0;
    int go = (site->flags & SITE_GO) != 0;
    struct thread_key tk = {.id = id, .g = 0};
    u64 regs[8] = {0};
    u64 sp = PT_REGS_SP(ctx);
    if (go) {
        tk.id = id >> 32;
        tk.g = ctx->r14;
        regs[0] = ctx->ax; regs[1] = ctx->bx; regs[2] = ctx->cx;
        regs[3] = ctx->di; regs[4] = ctx->si; regs[5] = ctx->r8;
        u64 hi = 0;  // go_frame_sp, which is defined below
        if (bpf_probe_read_user(&hi, sizeof(hi), (void *)(ctx->r14 + 8)) != 0 || hi < ctx->sp)
            return 0;
        sp = (1ULL << 62) - (hi - ctx->sp);
    } else {
        regs[0] = PT_REGS_PARM1(ctx); regs[1] = PT_REGS_PARM2(ctx); regs[2] = PT_REGS_PARM3(ctx);
        regs[3] = PT_REGS_PARM4(ctx); regs[4] = PT_REGS_PARM5(ctx); regs[5] = PT_REGS_PARM6(ctx);
    }
    u64 watching = site->slots;
    u32 named = site->where;
    for (u32 k = 0; k < WHERE_SLOTS; k++) {
        u32 one = (named >> (8 * k)) & 0xff;
        if (!one || one > CORAL_MAX_SLOTS || !(watching & (1ULL << ((one - 1) & 63))))
            continue;
        u32 slot = one - 1;
        struct where_prog *p = wheres.lookup(&slot);
        if (!p || !p->entry_mask)
            continue;
        u32 table = where_table(p, regs, s);
        struct where_key wk = {.id = tk.id, .g = tk.g, .sp = sp, .slot = slot};
        where_entries.update(&wk, &table);
    }
    return 0;
}

BPF_PROG_ARRAY(where_calls, 1);

// At the return, before the slots' loop (in it, more than the verifier
// takes): the slots whose condition does not hold, and those whose could
// not be evaluated. For every call of a session with a condition, also
// those that sampling or --min-duration leave out.
static __always_inline void where_at_return(u32 named, u64 watching, struct frame *f, u64 *results, u64 duration,
                                            struct thread_key *tk, u64 *rejected, u64 *unread)
{
    for (u32 k = 0; k < WHERE_SLOTS; k++) {
        u32 one = (named >> (8 * k)) & 0xff;
        if (!one || one > CORAL_MAX_SLOTS || !(watching & (1ULL << ((one - 1) & 63))))
            continue;
        u32 slot = one - 1;
        struct where_prog *p = wheres.lookup(&slot);
        if (!p)
            continue;
        u32 bits = 0;
#pragma unroll
        for (u32 j = 0; j < WHERE_RETURN_TERMS; j++) {
            u32 i = p->ret_terms[j];
            if (i >= WHERE_MAX_TERMS)
                continue;
            struct where_term *t = &p->terms[i & (WHERE_MAX_TERMS - 1)];
            u64 reg = t->reg;
            u64 raw = t->when == W_DURATION ? duration : reg == 1 ? results[1] : reg == 2 ? results[2] : results[0];
            bits |= where_compare(t, raw) << j;
        }
        u32 table = p->table;
        if (p->entry_mask) {
            struct where_key key = {.id = tk->id, .g = tk->g, .sp = f->sp, .slot = slot};
            u32 *kept = where_entries.lookup(&key);
            if (!kept) {             // evicted, or the entry was not seen
                *unread |= 1ULL << (slot & 63);
                continue;
            }
            table = *kept;
            where_entries.delete(&key);
        }
        if (table >> (16 + bits) & 1)
            *unread |= 1ULL << (slot & 63);
        else if (!(table >> bits & 1))
            *rejected |= 1ULL << (slot & 63);
    }
}

// --- --count-by: calls, errors and latency by the value of one key ----------
//
// coral/agentd/countby.py resolves the key (an argument, a field through a
// pointer, a result, a string) into a struct count_by; at each return of a
// call the session counts (after --where), the key is read and the call
// added to its row in count_rows: calls, failed calls, durations and a
// histogram, with atomic adds (rows are shared by the CPUs). A session
// has at most max_keys keys (count_used counts the keys it was given); a
// call whose key would be one more, or finds count_rows full, is added to
// the session's overflow row, and one whose key cannot be read to its
// unread row: the agent creates both when the session opens, so every
// call counted is in exactly one row. The agent reads the rows out, live
// and at the end. One such session per function at a time (the site names
// it, as `where` names conditions).
struct count_by {
    u8 kind;                         // CB_INT, CB_CSTR, CB_PAIR (pointer and length registers), CB_HELD; 0: none
    u8 when;                         // W_ENTRY: an argument's register, as at the entry; W_RETURN: a result's
    u8 reg;
    u8 len_reg;                      // CB_PAIR: the length's register
    u8 deref;                        // the value is at `offset` in what the register points to (a field)
    u8 width;                        // CB_INT: bytes of the value
    u8 err_reg;                      // a result register (plus one) non-zero for a failed call (Go's err); 0: none
    u8 pad;
    u32 offset;                      // deref: the field's offset; CB_HELD: the data pointer's in the object
    u32 len_off;                     // CB_HELD: the length's offset in the object
    u32 max_keys;
};

struct count_key {
    u32 slot;
    u32 row;                         // ROW_KEY, ROW_OVERFLOW, ROW_UNREAD
    u64 num;                         // CB_INT: the value; strings: STR_WHOLE, STR_NULL, STR_CUT
    char str[COUNT_STR];             // strings: the first COUNT_STR - 1 bytes, zero-padded
};

struct count_row {
    u64 calls;
    u64 errors;
    u64 sum_ns;
    u64 max_ns;
    u32 hist[CORAL_HIST_BUCKETS];    // buckets as in `hist` (coral/histogram.py)
};

BPF_ARRAY(count_bys, struct count_by, CORAL_MAX_SLOTS);
BPF_ARRAY(count_used, u64, CORAL_MAX_SLOTS);
// Allocated as keys come (2 KiB a row): a session with few keys costs few rows.
BPF_F_TABLE("hash", struct count_key, struct count_row, count_rows, COUNT_ROWS, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(empty_count_row, struct count_row, 1);

// The key's string into k: a C string, or `len` bytes at `ptr`.
static __always_inline int count_string(struct count_key *k, u64 ptr, u64 len, int cstr)
{
    if (!ptr) {
        k->num = STR_NULL;
        return 0;
    }
    if (cstr) {
        long n = bpf_probe_read_user_str(k->str, COUNT_STR, (void *)ptr);
        if (n < 0)
            return -1;
        if (n == COUNT_STR) {        // as long as what is kept: longer, unless its NUL is the last byte kept
            char next = 0;
            if (bpf_probe_read_user(&next, 1, (void *)(ptr + COUNT_STR - 1)) == 0 && next)
                k->num = STR_CUT;
        }
        return 0;
    }
    u64 n = len;
    if (n > COUNT_STR - 1) {
        n = COUNT_STR - 1;
        k->num = STR_CUT;
    }
    if (n && bpf_probe_read_user(k->str, n, (void *)ptr) < 0)
        return -1;
    return 0;
}

// Read the call's key into k; -1: it could not be read.
static __always_inline int count_key_of(struct count_by *cb, u64 *args, u64 *results, struct count_key *k)
{
    u64 raw = cb->when == W_ENTRY ? arg_at(args, cb->reg) :
              cb->reg == 1 ? results[1] : cb->reg == 2 ? results[2] : results[0];
    u64 len = 0;
    if (cb->kind == CB_INT) {
        if (cb->deref) {
            u64 base = raw;
            u32 n = cb->width & 15;
            if (n > 8)
                n = 8;
            raw = 0;
            if (!base || bpf_probe_read_user(&raw, n, (void *)(base + cb->offset)) < 0)
                return -1;
        }
        k->num = raw;
        return 0;
    }
    if (cb->kind == CB_CSTR) {
        if (cb->deref && (!raw || bpf_probe_read_user(&raw, sizeof(raw), (void *)(raw + cb->offset)) < 0))
            return -1;
        return count_string(k, raw, 0, 1);
    }
    if (cb->kind == CB_PAIR) {
        len = cb->when == W_ENTRY ? arg_at(args, cb->len_reg) :
              cb->len_reg == 1 ? results[1] : cb->len_reg == 2 ? results[2] : results[0];
        return count_string(k, raw, len, 0);
    }
    // CB_HELD: the register holds the object's address
    u64 obj = raw;
    if (!obj || bpf_probe_read_user(&raw, sizeof(raw), (void *)(obj + cb->offset)) < 0 ||
        bpf_probe_read_user(&len, sizeof(len), (void *)(obj + cb->len_off)) < 0)
        return -1;
    return count_string(k, raw, len, 0);
}

// A returned call to count, from finish_native to coral_count (per CPU:
// the tail call runs on the same CPU, before anything else can).
struct count_pending {
    u32 slot;                        // plus one; 0: nothing to count
    u32 pad;
    u64 duration;
    u64 args[CORAL_ARG_REGS];
    u64 results[3];
};
BPF_PERCPU_ARRAY(count_pendings, struct count_pending, 1);
BPF_PROG_ARRAY(count_calls, 1);

// At a return: keep what coral_count needs if the slot `named` (plus one)
// is in `counting` (it watches the call and --where keeps it) and has not
// expired. Counting is a program of its own (coral_count, tail-called at
// the end of the hit): inline here, it is more than the verifier takes.
static __always_inline void count_later(u32 named, u64 counting, struct frame *f, u64 *results, u64 duration, u64 now)
{
    if (!named || named > CORAL_MAX_SLOTS || !(counting >> ((named - 1) & 63) & 1))
        return;
    u32 slot = named - 1, zero = 0;
    struct slot_config *cfg = slots.lookup(&slot);
    struct count_pending *p = count_pendings.lookup(&zero);
    if (!cfg || !p || (cfg->expires_ns && now > cfg->expires_ns))
        return;
    p->slot = named;
    p->duration = duration;
    __builtin_memcpy(p->args, f->args, sizeof(p->args));
    p->results[0] = results[0];
    p->results[1] = results[1];
    p->results[2] = results[2];
}

// --stack's pending call (the rest of --stack is below): declared before
// coral_count, which takes the stack of the call it counted.
struct stack_pending {
    u64 slots;                       // 0: no stack wanted
    u64 start_ns;
    u64 id;                          // pid_tgid: checked by coral_stack (a per-CPU value another task could reuse)
};
BPF_PERCPU_ARRAY(stack_pendings, struct stack_pending, 1);
BPF_PROG_ARRAY(stack_calls, 1);

// After a return: tail-call coral_stack if finish_native wanted a stack.
static __always_inline void take_stack_if_wanted(struct pt_regs *ctx)
{
    u32 zero = 0;
    struct stack_pending *p = stack_pendings.lookup(&zero);
    if (!p || !p->slots)
        return;
    stack_calls.call(ctx, 0);
    p->slots = 0;  // only if the tail call failed
}

// The call a hit (or uretprobe) kept to count: add it to its key's row.
static __always_inline void count_pending_call(void)
{
    u32 zero = 0;
    struct count_pending *p = count_pendings.lookup(&zero);
    if (!p || !p->slot || p->slot > CORAL_MAX_SLOTS)
        return;
    u32 slot = p->slot - 1;
    p->slot = 0;
    u64 duration = p->duration;
    struct count_by *cb = count_bys.lookup(&slot);
    if (!cb || !cb->kind)
        return;
    struct count_key k = {};
    k.slot = slot;
    if (count_key_of(cb, p->args, p->results, &k) < 0) {
        __builtin_memset(&k, 0, sizeof(k));
        k.slot = slot;
        k.row = ROW_UNREAD;
    }
    struct count_row *row = count_rows.lookup(&k);
    if (!row) {
        u64 *used = count_used.lookup(&slot);
        if (used && __sync_fetch_and_add(used, 1) < cb->max_keys) {
            struct count_row *empty = empty_count_row.lookup(&zero);
            if (empty)
                count_rows.insert(&k, empty);  // fails if another CPU was first (then its row is there), or full
            row = count_rows.lookup(&k);
        }
    }
    if (!row) {
        __builtin_memset(&k, 0, sizeof(k));
        k.slot = slot;
        k.row = ROW_OVERFLOW;
        row = count_rows.lookup(&k);
        if (!row)
            return;                // the agent creates it before the session's first call
    }
    __sync_fetch_and_add(&row->calls, 1);
    if (cb->err_reg) {
        u64 err = cb->err_reg == 2 ? p->results[1] : cb->err_reg == 3 ? p->results[2] : p->results[0];
        if (err)
            __sync_fetch_and_add(&row->errors, 1);
    }
    __sync_fetch_and_add(&row->sum_ns, duration);
    if (duration > row->max_ns)
        row->max_ns = duration;      // CPUs racing here may keep the smaller: the slot's own max_ns is exact
    __sync_fetch_and_add(&row->hist[hist_bucket(duration) & (CORAL_HIST_BUCKETS - 1)], 1);
}

// Tail-called at the end of a hit (or uretprobe) that kept a call to count:
// count it, then take its stack if a --stack session wants it.
int coral_count(struct pt_regs *ctx)
{
    count_pending_call();
    take_stack_if_wanted(ctx);  // coral_stack (does not come back)
    return 0;
}

// At the end of a hit at a return: count the call it kept, if any.
static __always_inline void count_kept(struct pt_regs *ctx)
{
    u32 zero = 0;
    struct count_pending *p = count_pendings.lookup(&zero);
    if (!p || !p->slot)
        return;
    count_calls.call(ctx, 0);        // coral_count: does not come back ...
    p->slot = 0;                     // ... unless it is not loaded
}

// Copy the string an object at `obj` holds: read its data pointer and its
// length from the object, then at most CORAL_STR_MAX bytes from the data.
// The whole length goes in *len, so a longer string is shown as cut.
static __always_inline void read_held(char *dst, u64 *len, u32 *unread, u32 bit, u64 obj, struct held_string *h)
{
    u64 data = 0, n = 0;
    if (!obj || bpf_probe_read_user(&data, sizeof(data), (void *)(obj + h->data_off)) < 0 ||
        bpf_probe_read_user(&n, sizeof(n), (void *)(obj + h->len_off)) < 0) {
        *unread |= bit;
        return;
    }
    *len = n;
    u64 copy = n;
    if (copy > CORAL_STR_MAX)
        copy = CORAL_STR_MAX;
    if (copy && bpf_probe_read_user(dst, copy, (void *)data) < 0)
        *unread |= bit;
}

// Strings held in objects that arguments point at are copied at the entry:
// by the return the callee may have freed them (a Rust String passed by
// value is the callee's to drop); so are Go strings passed on the stack.
// Kept per call (thread or goroutine, frame position) until its return
// takes them; a call that never returns leaves its entry to the LRU.
struct call_key {
    u64 id;                          // struct thread_key's: pid_tgid (native) or tgid (Go) ...
    u64 g;                           // ... and the goroutine (Go), else 0
    u64 sp;                          // the frame's sp (frame.sp)
};

struct entry_strings {
    char strs[2][CORAL_STR_MAX];
    u64 lens[2];
    u32 unread;
    u32 pad;
};

BPF_TABLE("lru_hash", struct call_key, struct entry_strings, entry_strings, 4096);
BPF_PERCPU_ARRAY(empty_entry_strings, struct entry_strings, 1);

// The config of the slot `held` names (HELD_ARGS_SLOT or HELD_RESULT_SLOT),
// if that slot watches this call.
static __always_inline struct slot_config *held_config(u32 named, u64 watching)
{
    if (!named || named > CORAL_MAX_SLOTS || !(watching & (1ULL << ((named - 1) & 63))))
        return 0;
    u32 key = named - 1;
    return slots.lookup(&key);
}

// At a native entry: if the site names a slot that captures arguments
// holding strings, copy them; returns the frame's `held`.
static __always_inline u32 copy_held_at_entry(struct pt_regs *ctx, u32 held, u64 watching, u64 id)
{
    struct slot_config *cfg = held_config(HELD_ARGS_SLOT(held), watching);
    if (!cfg || !(cfg->capture & 1) || (cfg->held[0].reg < 0 && cfg->held[1].reg < 0))
        return held;
    u32 zero = 0;
    struct entry_strings *empty = empty_entry_strings.lookup(&zero);
    if (!empty)
        return held;
    struct call_key k = {.id = id, .g = 0, .sp = PT_REGS_SP(ctx)};
    entry_strings.update(&k, empty);  // replaces one left by a call that never returned
    struct entry_strings *es = entry_strings.lookup(&k);
    if (!es)
        return held;
    // Indexed by the config's register: copied out of ctx first (the
    // verifier refuses a load through a computed ctx pointer).
    u64 args[8] = {PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx),
                   PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx), 0, 0};
    s32 reg = cfg->held[0].reg;
    if (reg >= 0)
        read_held(es->strs[0], &es->lens[0], &es->unread, 1, args[reg & 7], &cfg->held[0]);
    reg = cfg->held[1].reg;
    if (reg >= 0)
        read_held(es->strs[1], &es->lens[1], &es->unread, 2, args[reg & 7], &cfg->held[1]);
    return held | HELD_COPIED;
}

// The strings copied at this call's entry (every slot that captures the
// function's arguments wants the same ones); none (evicted, or the session
// began during the call): those slots are unread.
static __always_inline void take_held(struct native_event *e, struct slot_config *cfg, struct thread_key *tk,
                                      struct frame *f)
{
    struct call_key k = {.id = tk->id, .g = tk->g, .sp = f->sp};
    struct entry_strings *es = (f->held & HELD_COPIED) ? entry_strings.lookup(&k) : 0;
    if (!es) {
        e->unread |= cfg->held_mask;
        return;
    }
    __builtin_memcpy(e->strs, es->strs, sizeof(e->strs));
    __builtin_memcpy(e->lens, es->lens, sizeof(e->lens));
    e->unread |= es->unread;
}

// A call's stack-assigned arguments (Go's past its registers; System V's
// past its registers and its long doubles), copied at its entry: by the
// return the callee may have written over them (they are its variables).
// Kept as entry_strings are (call_key).

struct stack_args {
    char bytes[CORAL_STACK_BYTES];
    u32 unread;
    u32 pad;
};

BPF_TABLE("lru_hash", struct call_key, struct stack_args, stack_args, 4096);
BPF_PERCPU_ARRAY(stack_args_scratch, struct stack_args, 1);

// At an entry: if the site names a slot that captures stack-assigned
// arguments, copy stack_len bytes from after the return address; and Go's
// held strings (below). Returns the frame's `held`.
static __always_inline u32 copy_stack_at_entry(struct pt_regs *ctx, u32 held, u64 watching, struct thread_key *tk,
                                               u64 sp, int go)
{
    struct slot_config *cfg = held_config(HELD_ARGS_SLOT(held), watching);
    if (!cfg || !(cfg->capture & 1))
        return held;
    u32 zero = 0;
    struct call_key k = {.id = tk->id, .g = tk->g, .sp = sp};
    if (cfg->stack_len) {
        struct stack_args *a = stack_args_scratch.lookup(&zero);
        if (!a)
            return held;
        u32 n = cfg->stack_len;
        if (n > CORAL_STACK_BYTES)
            n = CORAL_STACK_BYTES;
        a->unread = bpf_probe_read_user(a->bytes, n, (void *)(PT_REGS_SP(ctx) + 8)) < 0;
        if (stack_args.update(&k, a) != 0)  // replaces one left by a call that never returned
            return held;
        held |= HELD_STACK;
    }
    // Go strings and []byte on the stack (held_string reg CORAL_FROM_STACK;
    // a native function's held strings are copy_held_at_entry's): their data
    // pointer and length are words of the stack arguments, at held_string's
    // offsets, copied as a held string's into entry_strings for take_held.
    // Go, a result register (0..8): an error argument's data word, whose
    // object may hold the error's message (at held_string's offsets), copied
    // likewise; the agent shows it only for a type that keeps it there.
    s32 r0 = cfg->held[0].reg, r1 = cfg->held[1].reg;
    int stacked = (held & HELD_STACK) && (r0 == CORAL_FROM_STACK || r1 == CORAL_FROM_STACK);
    int in_regs = go && ((r0 >= 0 && r0 < 9) || (r1 >= 0 && r1 < 9));
    if (!stacked && !in_regs)
        return held;
    struct entry_strings *empty = empty_entry_strings.lookup(&zero);
    if (!empty)
        return held;
    entry_strings.update(&k, empty);  // replaces one left by a call that never returned
    struct entry_strings *es = entry_strings.lookup(&k);
    if (!es)
        return held;
    u64 args = PT_REGS_SP(ctx) + 8;
    u64 regs[16] = {ctx->ax, ctx->bx, ctx->cx, ctx->di, ctx->si, ctx->r8, ctx->r9, ctx->r10, ctx->r11};
    if (r0 == CORAL_FROM_STACK && stacked)
        read_held(es->strs[0], &es->lens[0], &es->unread, 1, args, &cfg->held[0]);
    else if (go && r0 >= 0 && r0 < 9)
        read_held(es->strs[0], &es->lens[0], &es->unread, 1, regs[r0 & 15], &cfg->held[0]);
    if (r1 == CORAL_FROM_STACK && stacked)
        read_held(es->strs[1], &es->lens[1], &es->unread, 2, args, &cfg->held[1]);
    else if (go && r1 >= 0 && r1 < 9)
        read_held(es->strs[1], &es->lens[1], &es->unread, 2, regs[r1 & 15], &cfg->held[1]);
    return held | HELD_COPIED;
}

// The stack arguments copied at this Go call's entry, into the record; none
// (evicted, or the session began during the call): marked unread. Looked
// up for each record, not once before the slots' loop: a pointer that may
// be null, kept through that loop, doubles what the verifier walks.
static __always_inline void take_stack(struct native_event *e, struct thread_key *tk, struct frame *f)
{
    struct call_key k = {.id = tk->id, .g = tk->g, .sp = f->sp};
    struct stack_args *sa = (f->held & HELD_STACK) ? stack_args.lookup(&k) : 0;
    if (sa && !sa->unread)
        __builtin_memcpy(e->stack, sa->bytes, sizeof(e->stack));
    else
        e->unread |= UNREAD_STACK;
}

// A read of user memory fails where the page is not in memory yet (a
// probe cannot fault it in): the record says so (unread), never an empty string.
static __always_inline void read_str(struct native_event *e, u32 at, s32 arg, struct frame *f)
{
    if (arg >= 0 && arg < CORAL_ARG_REGS &&
        bpf_probe_read_user_str(e->strs[at & 1], CORAL_STR_MAX, (void *)arg_at(f->args, arg)) < 0)
        e->unread |= 1 << (at & 1);
}

// A string held in the object the result register points at (a std::string
// or String returned through memory): its data pointer goes in *data_out,
// which stands for results[2] (System V returns in two registers: the
// third is free) when the slot's config reads the result's string
// (str_ret = 2), and its length is returned (~0: the object could not be
// read). Read once, before the slots' loop in finish_native: inside it, the
// reads are more than the verifier takes. The slot whose config is used is
// the one the entry's site named (HELD_RESULT_SLOT).
static __always_inline u64 read_held_result(u32 held, u64 watching, u64 *results, u64 *data_out)
{
    struct slot_config *cfg = held_config(HELD_RESULT_SLOT(held), watching);
    if (!cfg || !(cfg->capture & 2) || cfg->held_ret.reg < 0)
        return 0;
    u64 rax = results[0], rdx = results[1];
    // Loaded apart: clang would otherwise pick the address with `|`, which the verifier refuses.
    asm volatile("" : "+r"(rax), "+r"(rdx));
    u64 obj = cfg->held_ret.reg == 1 ? rdx : rax;
    u64 data = 0, len = 0;
    if (!obj || bpf_probe_read_user(&data, sizeof(data), (void *)(obj + cfg->held_ret.data_off)) < 0 ||
        bpf_probe_read_user(&len, sizeof(len), (void *)(obj + cfg->held_ret.len_off)) < 0) {
        *data_out = 0;
        return ~0ULL;
    }
    *data_out = data;
    return len;
}

// Go: a string result (or []byte) past RAX..RCX or on the stack: its data
// pointer into *data_out, which stands for results[2] when the slot's config
// reads the result's string (str_ret = 2, as read_held_result's). held_ret.reg
// says where it is: a result register (0..8), or CORAL_FROM_STACK plus its
// offset in the stack results. With held_ret.deref, that word is an
// error's data pointer: the string is the one the object there holds (at
// data_off, len_off: *errors.errorString's s), and its length is returned
// (~0: the object could not be read), as read_held_result's; the agent
// shows it only for an error whose type keeps its message there. Read
// once, before the slots' loop.
static __always_inline u64 go_result_pointer(struct pt_regs *ctx, u32 held, u64 watching, u64 *data_out)
{
    struct slot_config *cfg = held_config(HELD_RESULT_SLOT(held), watching);
    if (!cfg || !(cfg->capture & 2) || cfg->held_ret.reg < 0)
        return 0;
    u32 r = cfg->held_ret.reg;
    u64 p = 0;
    if (r >= CORAL_FROM_STACK) {
        u64 at = PT_REGS_SP(ctx) + 8 + (cfg->ret_stack_off & 0xffff) + ((r - CORAL_FROM_STACK) & 0xff);
        if (bpf_probe_read_user(&p, sizeof(p), (void *)at) < 0)
            p = 0;
    } else {
        u64 regs[9] = {ctx->ax, ctx->bx, ctx->cx, ctx->di, ctx->si, ctx->r8, ctx->r9, ctx->r10, ctx->r11};
        if (r < 9)
            p = regs[r & 15];
    }
    if (!cfg->held_ret.deref) {
        *data_out = p;
        return 0;
    }
    u64 data = 0, len = 0;
    if (!p || bpf_probe_read_user(&data, sizeof(data), (void *)(p + (cfg->held_ret.data_off & 0xff))) < 0 ||
        bpf_probe_read_user(&len, sizeof(len), (void *)(p + (cfg->held_ret.len_off & 0xff))) < 0) {
        *data_out = 0;
        return ~0ULL;
    }
    *data_out = data;
    return len;
}

// --- --stack: the caller's stack, at the return ---------------------------
//
// finish_native notes the slots that want a call's stack (stack_wanted);
// coral_hit or coral_return then tail-call coral_stack, a program verified
// apart (coral_hit is near the verifier's limits), which reserves one
// record after the call's: the kernel's frame-pointer walk, or a bounded
// copy of the stack for the agent to unwind with .eh_frame. At the return
// the stack above the probed function is the caller's, as at its entry.
// The agent pairs it with the call's records by the call's (pid, tid, start).
// Bit i: slot i takes stacks (written by the agent with the slot's config).
BPF_ARRAY(stack_slots, u64, 1);

// After the slots' loop, not in it: a value built in that loop is one more
// the verifier tells apart on every path. So a call a slot sampled out or
// filtered has its stack taken too; the agent, finding no record of the
// call, drops it.
static __always_inline void stack_wanted(u64 watching, u64 start_ns, u64 id)
{
    u32 zero = 0;
    u64 *mask = stack_slots.lookup(&zero);
    if (!mask || !(watching & *mask))
        return;
    struct stack_pending *p = stack_pendings.lookup(&zero);
    if (!p)
        return;
    p->slots = watching & *mask;
    p->start_ns = start_ns;
    p->id = id;
}

static __always_inline void stack_head(struct stack_head *h, u32 type, struct stack_pending *p, struct pt_regs *ctx,
                                       u32 at_ret)
{
    h->type = type;
    h->at_ret = at_ret;
    h->pid = p->id >> 32;
    h->tid = (u32)p->id;
    h->start_ns = p->start_ns;
    h->slots = p->slots;
    h->ip = PT_REGS_IP(ctx);
    h->sp = PT_REGS_SP(ctx);
    h->bp = ctx->bp;
    h->ret = 0;
    bpf_probe_read_user(&h->ret, sizeof(h->ret), (void *)h->sp);
}

// In a Python process whose SDK registered its interpreter's layout: the
// calling thread's Python frames, above the native ones (the agent puts them
// where the interpreter's loop is in the native stack).
static __always_inline void stack_python(struct py_stack *out, struct stack_pending *p)
{
    out->depth = 0;
    out->cut = 0;
    u32 tgid = p->id >> 32;
    struct py_layout *layout = python.lookup(&tgid);
    if (layout)
        python_frames(out, layout, (u32)p->id);
}

int coral_stack(struct pt_regs *ctx)
{
    u32 zero = 0;
    struct stack_pending *p = stack_pendings.lookup(&zero);
    if (!p || !p->slots)
        return 0;
    if (p->id != bpf_get_current_pid_tgid()) {
        p->slots = 0;
        return 0;
    }
    // At a RET site the probed function is still on top; at a uretprobe it has returned.
    struct site *s = site_of(ctx);  // the hit's (a uretprobe carries its entry's cookie)
    u32 at_ret = s && (s->flags & (SITE_GO_RET | SITE_RET)) ? 1 : 0;
    u32 mode = 0, bytes = 0;  // of the slots together: both records if they differ, the largest copy
    u64 stacked = p->slots;
    for (u32 slot = 0; slot < CORAL_MAX_SLOTS; slot++) {
        if (!(stacked >> slot))
            break;
        if (!(stacked & (1ULL << slot)))
            continue;
        u32 k = slot;
        struct slot_config *cfg = slots.lookup(&k);
        if (!cfg)
            continue;
        mode |= cfg->stack;
        if (cfg->stack_bytes > bytes)
            bytes = cfg->stack_bytes;
    }
    if (mode & STACK_COPY) {
        struct stack_copy_event *e = events.ringbuf_reserve(sizeof(*e));
        if (e) {
            stack_head(&e->head, EV_STACK_COPY, p, ctx, at_ret);
            stack_python(&e->py, p);
            u32 n = bytes;
            if (n > CORAL_STACK_COPY)
                n = CORAL_STACK_COPY;
            // A read that crosses the top of the stack fails whole: try less.
            long got = -1;
            for (int i = 0; i < 4 && got < 0; i++) {
                u32 want = n >> i;
                if (want == 0)
                    break;
                want = ((want - 1) & (CORAL_STACK_COPY - 1)) + 1;  // 1..CORAL_STACK_COPY, as the verifier sees it
                if (bpf_probe_read_user(e->copy, want, (void *)e->head.sp) == 0)
                    got = want;
            }
            e->head.size = got;
            events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
        } else {
            bump_global(G_STACK_LOST);
        }
    }
    if (mode & STACK_WALK) {
        struct stack_walk_event *e = events.ringbuf_reserve(sizeof(*e));
        if (e) {
            stack_head(&e->head, EV_STACK_WALK, p, ctx, at_ret);
            stack_python(&e->py, p);
            e->head.size = bpf_get_stack(ctx, e->ips, sizeof(e->ips), BPF_F_USER_STACK);
            events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
        } else {
            bump_global(G_STACK_LOST);
        }
    }
    p->slots = 0;
    return 0;
}

static __always_inline void finish_native(struct pt_regs *ctx, struct frame *f, u64 now, u64 *results, u64 id,
                                          u64 watching, struct thread_key *tk, int go)
{
    u64 duration = now - f->ts;
    u64 held_data = results[2];
    u64 held_len = 0;
    if (go)
        held_len = go_result_pointer(ctx, f->held, watching, &held_data);
    else
        held_len = read_held_result(f->held, watching, results, &held_data);
    u64 rejected = 0, unread = 0;
    if (f->where)
        where_at_return(f->where, watching, f, results, duration, tk, &rejected, &unread);
    if (f->count_by)
        count_later(f->count_by, watching & ~(rejected | unread), f, results, duration, now);
    for (u32 slot = 0; slot < CORAL_MAX_SLOTS; slot++) {
        if (!(watching >> slot))
            break;  // no higher slot watches this call
        if (!(watching & (1ULL << slot)))
            continue;
        u32 key = slot;
        struct slot_config *cfg = slots.lookup(&key);
        struct slot_counts *c = counts.lookup(&key);
        if (!cfg || !c || !account(slot, c, cfg, now, duration, rejected, unread))
            continue;
        if (cfg->capture & CAPTURE_COUNT_ONLY)
            continue;  // --count-by: counted above, no record
        if (!(cfg->capture & 3) && !cfg->stack) {
            struct native_timing_event *t = events.ringbuf_reserve(sizeof(*t));
            if (!t) {
                c->stats[ST_RINGBUF] += 1;
                continue;
            }
            t->type = EV_NATIVE_TIMING;
            t->slot = slot;
            t->pid = id >> 32;
            t->tid = (u32)id;
            t->start_ns = f->ts;
            t->duration_ns = duration;
            events.ringbuf_submit(t, BPF_RB_NO_WAKEUP);
            c->stats[ST_EMITTED] += 1;
            continue;
        }
        // A Go call's record is larger (its other result registers and its
        // stack results); `go` is a constant in each copy, so each reserves
        // and clears a constant size.
        struct native_event *e = events.ringbuf_reserve(go ? sizeof(struct native_go_event) : sizeof(*e));
        if (!e) {
            c->stats[ST_RINGBUF] += 1;
            continue;
        }
        if (go)
            __builtin_memset(e, 0, sizeof(struct native_go_event));
        else
            __builtin_memset(e, 0, sizeof(*e));
        e->type = go ? EV_NATIVE_GO : EV_NATIVE;
        e->slot = slot;
        e->pid = id >> 32;
        e->tid = (u32)id;
        e->start_ns = f->ts;
        e->duration_ns = duration;
        if (cfg->capture & 1) {
            __builtin_memcpy(e->args, f->args, sizeof(e->args));
            if (cfg->held_mask)  // first: C strings and a struct go in their own slots over these
                take_held(e, cfg, tk, f);
            if (cfg->stack_len)
                take_stack(e, tk, f);

            read_str(e, 0, cfg->str_arg[0], f);
            read_str(e, 1, cfg->str_arg[1], f);
            if (cfg->blob_arg >= 0 && cfg->blob_arg < CORAL_ARG_REGS) {
                u32 n = cfg->blob_len;
                if (n > CORAL_STR_MAX)
                    n = CORAL_STR_MAX;
                if (bpf_probe_read_user(e->strs[cfg->blob_at & 1], n, (void *)arg_at(f->args, cfg->blob_arg)) < 0)
                    e->unread |= 1 << (cfg->blob_at & 1);
            }
        }
        if (cfg->capture & 2) {
            __builtin_memcpy(e->results, results, 3 * sizeof(u64));
            if (go) {
                // Go's other result registers (constant in each copy), and the
                // results it returns on the stack: at a RET the stack pointer
                // points at the return address, and the caller's stack
                // arguments, then its result area, follow it (abi-internal.md).
                struct native_go_tail *g = &((struct native_go_event *)e)->go;
                g->results[0] = ctx->di;
                g->results[1] = ctx->si;
                g->results[2] = ctx->r8;
                g->results[3] = ctx->r9;
                g->results[4] = ctx->r10;
                g->results[5] = ctx->r11;
                u32 n = cfg->ret_stack_len;
                if (n > CORAL_STACK_RET_BYTES)
                    n = CORAL_STACK_RET_BYTES;
                if (n && bpf_probe_read_user(g->stack_ret, n,
                                             (void *)(PT_REGS_SP(ctx) + 8 + (cfg->ret_stack_off & 0xffff))) < 0)
                    e->unread |= UNREAD_STACK_RET;
            }
            if (cfg->str_ret >= 0) {
                u64 p = cfg->str_ret == 1 ? results[1] : cfg->str_ret == 2 ? held_data : results[0];
                if (bpf_probe_read_user_str(e->strs[cfg->str_ret_at & 1], CORAL_STR_MAX, (void *)p) < 0)
                    e->unread |= 1 << (cfg->str_ret_at & 1);
                e->lens[cfg->str_ret_at & 1] = held_len;
            }
        }
        events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
        c->stats[ST_EMITTED] += 1;
    }
    stack_wanted(watching, f->ts, id);
    if (f->held & HELD_STACK) {
        struct call_key k = {.id = tk->id, .g = tk->g, .sp = f->sp};
        stack_args.delete(&k);
    }
    if (f->held & HELD_COPIED) {
        struct call_key k = {.id = tk->id, .g = tk->g, .sp = f->sp};
        entry_strings.delete(&k);
    }
}

// A frame's position on its stack, comparable between entry and return.
// Native: the stack pointer (at entry it points at the return address; at
// the uretprobe it is 8 above). Go: goroutine stacks are copied elsewhere
// when they grow, so use the distance from the stack's top (g.stack.hi, at
// offset 8 of the g that R14 holds), which the copy preserves, mapped so
// that deeper frames compare lower, as native ones do. At a RET the stack
// pointer is back where it was at entry.
static __always_inline u64 go_frame_sp(struct pt_regs *ctx)
{
    u64 hi = 0;
    if (bpf_probe_read_user(&hi, sizeof(hi), (void *)(ctx->r14 + 8)) != 0 || hi < ctx->sp)
        return 0;
    return (1ULL << 62) - (hi - ctx->sp);
}

// Calls a session did not see completed, counted by cause and by the set of
// slots that watched them (a frame is one call); the agent adds up, for
// each slot, the counts of the sets that hold it. A loop over the slots
// here, inside the loops over frames, is more than the verifier takes.
//   BY_UNWOUND: frames whose call left without returning (an exception, a
//     panic, longjmp): never paired with a return.
//   BY_TOO_DEEP: entries deeper than CORAL_MAX_DEPTH (or with deep_frames
//     full): not tracked, so their returns are not seen.
//   BY_TAIL_CALL: calls that left by a tail jump (SITE_TAIL): the RET that
//     ends them is another function's.
struct by_slots_key {
    u64 slots;
    u64 cause;
};
BPF_HASH(by_slots, struct by_slots_key, u64, 8192);

static __always_inline void count_by_slots(u64 slots, u64 cause)
{
    struct by_slots_key key = {.slots = slots & ~stopped_slots(), .cause = cause};
    if (!key.slots)
        return;
    u64 *count = by_slots.lookup(&key);
    if (!count) {
        u64 zero = 0;
        by_slots.insert(&key, &zero);  // fails if another CPU was first: then its entry is there
        count = by_slots.lookup(&key);
    }
    if (count)
        __sync_fetch_and_add(count, 1);
    else
        bump_global(G_UNWOUND_UNCOUNTED);  // the map is full
}

// --errors-only on C++ and Rust: a call that leaves by an exception or a
// panic is the failed call. Its frame, found dead by a later hit, is kept
// here when its site said a slot watching wants such calls (HELD_UNWOUND in
// the site's `held`, copied into the frame): one insert, no map read and no
// loop, since this runs inside the loops over frames, near the verifier's
// limit. The agent reads and deletes the entries on its drain timer and
// reports each, for the slots of the frame that want them, as a call that
// ended by unwinding. Its end is not known, only when it was found dead
// (found_ns). A hash, not an LRU: an entry that does not fit is counted
// (G_UNWOUND_LOST; its sessions count it in lost.unwound), never evicts one
// not yet read.
struct unwound_key {
    u64 id;                          // struct thread_key's: pid_tgid (native)
    u64 g;
    u64 ts;                          // the call's entry (frame.ts)
    u64 found_ns;                    // when a later hit found it dead
};
BPF_HASH(unwound_calls, struct unwound_key, struct frame, CORAL_UNWOUND_CALLS);

// A frame whose site had HELD_UNWOUND (no map read here: this runs inside
// the loops over frames, near the verifier's limit).
static __always_inline void unwound(struct frame *f, struct thread_key *tk)
{
    bump_global(G_STALE);
    count_by_slots(f->slots, BY_UNWOUND);
    if (!(f->held & HELD_UNWOUND))
        return;
    struct unwound_key k = {.id = tk->id, .g = tk->g, .ts = f->ts, .found_ns = bpf_ktime_get_ns()};
    if (unwound_calls.insert(&k, f) != 0)
        bump_global(G_UNWOUND_LOST);  // full: those sessions count it in lost.unwound
}

static __always_inline void add_global(u32 which, s64 delta)
{
    u64 *value = globals.lookup(&which);
    if (value)
        *value += delta;
}

// The top frame was just dropped (depth is now `depth`): frame depth-8,
// if there is one, comes back from deep_frames into the ring slot it freed.
// One missing there (the agent deleted it: its process had exited) leaves
// an empty frame that no return matches.
static __always_inline void take_back(struct stack *st, struct thread_key *tk, u32 depth)
{
    if (depth < CORAL_RING_FRAMES)
        return;
    struct deep_key dk = {.thread = *tk, .depth = depth - CORAL_RING_FRAMES};
    struct frame *saved = deep_frames.lookup(&dk);
    if (!saved) {
        st->frames[RING(depth)].sp = 0;     // dropped as unwound by the next hit,
        st->frames[RING(depth)].slots = 0;  // counted for no session
        return;
    }
    __builtin_memcpy(&st->frames[RING(depth)], saved, sizeof(*saved));
    deep_frames.delete(&dk);
    add_global(G_DEEP_IN_USE, -1);
}

// Drop the top frame as unwound, and bring back the one below the ring.
static __always_inline void drop_top(struct stack *st, struct thread_key *tk, u32 depth)
{
    unwound(&st->frames[RING(depth - 1)], tk);
    st->depth = depth - 1;
    take_back(st, tk, depth - 1);
}

// Push a frame on `st`, the frames of this thread or goroutine (stack_of).
// Returns the entry's timestamp (the time it gave up, if it pushed no frame:
// every path returns a time, so the verifier has one kind of value after it).
static __always_inline u64 push_frame(struct stack *st, struct thread_key *tk, u64 watching, u64 ip,
                                      struct pt_regs *ctx, int go, int uret, u32 held, u32 where, u32 count_by)
{
    u64 sp = go ? go_frame_sp(ctx) : PT_REGS_SP(ctx);
    u32 depth = st->depth;
    if (go && depth > 0 && depth <= CORAL_MAX_DEPTH) {
        // Go's prologue grows a too-small stack and restarts the function
        // from its first instruction: the same call, not a new one.
        struct frame *top = &st->frames[RING(depth - 1)];
        if (top->func_ip == ip && top->sp == sp && top->at == st->changes)
            return bpf_ktime_get_ns();  // nothing came between: a restart (a frame at the same place after others is dead)
    }
    // A frame at or below this entry's position is dead: its call left
    // without returning (an exception unwound it), since a live caller's
    // frame is always above its callee's. Up to CORAL_DROP_MAX are dropped
    // here; the next entry or return drops more.
    for (int i = 0; i < CORAL_DROP_MAX; i++) {
        depth = st->depth;
        if (depth == 0 || depth > CORAL_MAX_DEPTH || st->frames[RING(depth - 1)].sp > sp)
            break;
        drop_top(st, tk, depth);
    }
    // Read back from the map: the verifier then has one state here, not one
    // per number of frames dropped above (which multiplies all that follows).
    depth = *(volatile u32 *)&st->depth;
    // The kernel itself keeps at most CORAL_URETPROBE_DEPTH uretprobes open
    // on a task: a deeper one's return would never be seen.
    u32 limit = uret && CORAL_MAX_DEPTH > CORAL_URETPROBE_DEPTH ? CORAL_URETPROBE_DEPTH : CORAL_MAX_DEPTH;
    if (depth >= limit) {
        bump_global(G_STACK_FULL);  // untracked; its return will find an outer frame and be ignored
        count_by_slots(watching, BY_TOO_DEEP);
        return bpf_ktime_get_ns();
    }
    struct frame *f = &st->frames[RING(depth)];
    if (depth >= CORAL_RING_FRAMES) {
        // The ring is full: its bottom frame (depth - 8) moves to deep_frames.
        struct deep_key dk = {.thread = *tk, .depth = depth - CORAL_RING_FRAMES};
        if (deep_frames.insert(&dk, f) == 0) {
            add_global(G_DEEP_IN_USE, 1);
        } else if (deep_frames.update(&dk, f) != 0) {  // a frame left under this key (a thread gone deep) is replaced
            bump_global(G_STACK_FULL);  // deep_frames is full
            count_by_slots(watching, BY_TOO_DEEP);
            return bpf_ktime_get_ns();
        }
    }
    held = copy_stack_at_entry(ctx, held, watching, tk, sp, go);  // before the entry's timestamp: not in the duration
    u64 ts = bpf_ktime_get_ns();
    f->ts = ts;
    f->sp = sp;
    f->func_ip = ip;
    f->slots = watching;
    if (go) {
        // Go >= 1.17 register ABI (amd64): RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11
        f->args[0] = ctx->ax;
        f->args[1] = ctx->bx;
        f->args[2] = ctx->cx;
        f->args[3] = ctx->di;
        f->args[4] = ctx->si;
        f->args[5] = ctx->r8;
        f->args[6] = ctx->r9;
        f->args[7] = ctx->r10;
        f->args[8] = ctx->r11;
    } else {
        f->args[0] = PT_REGS_PARM1(ctx);
        f->args[1] = PT_REGS_PARM2(ctx);
        f->args[2] = PT_REGS_PARM3(ctx);
        f->args[3] = PT_REGS_PARM4(ctx);
        f->args[4] = PT_REGS_PARM5(ctx);
        f->args[5] = PT_REGS_PARM6(ctx);
        f->args[6] = f->args[7] = f->args[8] = 0;  // System V's seventh argument is on the stack
    }
    st->changes++;
    f->at = st->changes;
    f->held = held;
    f->where = where;
    f->count_by = count_by;
    st->depth = depth + 1;
    return ts;
}

// Find the frame a return belongs to and finish that call: the frame whose
// position (frame_sp) is the return's, after dropping frames of calls that
// left without returning (longjmp, panic): up to CORAL_DROP_MAX of them here,
// the rest by later hits. A return from a call we did not see enter finds an
// outer frame and is ignored. Returns the slots the call was reported to
// (what the hit is charged to), and the time it took in *now_out. With
// `id_of_stack` (a constant), the thread's id is the one its entries kept;
// and if `tgid` is not 0, a thread of another process (vfork's child in
// this memory) is not ours: nothing is done.
static __always_inline u64 pop_frame(struct pt_regs *ctx, struct thread_key *tk, u64 entry_sp, u64 func_ip, u64 *results,
                                     u64 id, int tail, u64 *now_out, int go, int id_of_stack, u32 tgid)
{
    struct stack *st = stack_of(tk, go, 0);
    if (!st) {
        bump_global(G_UNPAIRED);
        return 0;
    }
    if (id_of_stack) {
        id = st->id;
        if (tgid && id >> 32 != tgid)
            return 0;
        tk->id = id;
    }
    u32 found = 0;
    for (int i = 0; i < CORAL_DROP_MAX; i++) {
        u32 depth = st->depth;
        if (depth == 0 || depth > CORAL_MAX_DEPTH)
            break;
        struct frame *f = &st->frames[RING(depth - 1)];
        if (f->sp < entry_sp) {
            drop_top(st, tk, depth);
            continue;
        }
        if (f->sp == entry_sp && (!func_ip || f->func_ip == func_ip))
            found = depth;
        break;
    }
    if (!found) {
        bump_global(G_UNPAIRED);
        return 0;
    }
    u64 now = bpf_ktime_get_ns();
    *now_out = now;
    struct frame *f = &st->frames[RING(found - 1)];
    u64 watching = f->slots & ~stopped_slots();  // a slot stopped since the entry reports nothing
    if (tail)
        count_by_slots(watching, BY_TAIL_CALL);  // no duration: the call goes on in another function
    else
        finish_native(ctx, f, now, results, id, watching, tk, go);
    st->depth = found - 1;
    st->changes++;
    take_back(st, tk, found - 1);  // after finishing: it overwrites f's slot
    return watching;
}

// Returns the time it read (what the hit is charged at).
static __always_inline u64 python_call(struct pt_regs *ctx, u64 watching, u64 id)
{
    const struct coral_call *rec = (const struct coral_call *)PT_REGS_PARM1(ctx);
    u64 head[5];  // fn_id, call_id, start_ns, end_ns, flags (and args_len)
    if (bpf_probe_read_user(head, sizeof(head), rec) != 0)
        return bpf_ktime_get_ns();
    int raised = (u32)head[4] & CORAL_CALL_RAISED;
    u64 duration = head[3] > head[2] ? head[3] - head[2] : 0;
    u64 now = bpf_ktime_get_ns();
    // The SDK evaluated the function's --where (one condition per armed
    // function, so the same for every slot watching it): counted, not sent,
    // as a native condition's answer is (account).
    u64 rejected = (u32)head[4] & CORAL_CALL_FILTERED ? ~0ULL : 0;
    u64 unread = (u32)head[4] & CORAL_CALL_WHERE_ERROR ? ~0ULL : 0;
    for (u32 slot = 0; slot < CORAL_MAX_SLOTS; slot++) {
        if (!(watching >> slot))
            break;
        if (!(watching & (1ULL << slot)))
            continue;
        u32 key = slot;
        struct slot_config *cfg = slots.lookup(&key);
        struct slot_counts *c = counts.lookup(&key);
        if (!cfg || !c || cfg->fn_id != head[0] || !account(slot, c, cfg, now, duration, rejected, unread))
            continue;
        if ((u32)head[4] & CORAL_CALL_COUNTED)
            continue;  // --count-by: the SDK counted it by its key (coral/sdk/countby.py), nothing to send
        if (!(cfg->capture & 3) && !raised && !((u32)head[4] & CORAL_CALL_STACK)) {
            // Timing only: 56 bytes instead of the whole record.
            struct python_timing_event *t = events.ringbuf_reserve(sizeof(*t));
            if (!t) {
                c->stats[ST_RINGBUF] += 1;
                continue;
            }
            t->type = EV_PYTHON_TIMING;
            t->slot = slot;
            t->pid = id >> 32;
            t->tid = (u32)id;
            __builtin_memcpy(t->head, head, sizeof(head));
            events.ringbuf_submit(t, BPF_RB_NO_WAKEUP);
            c->stats[ST_EMITTED] += 1;
            continue;
        }
        struct python_event *e = events.ringbuf_reserve(sizeof(*e));
        if (!e) {
            c->stats[ST_RINGBUF] += 1;
            continue;
        }
        e->type = EV_PYTHON;
        e->slot = slot;
        e->pid = id >> 32;
        e->tid = (u32)id;
        // The Python frames (--stack) only when the SDK put them there.
        long read = (u32)head[4] & CORAL_CALL_STACK ? bpf_probe_read_user(&e->call, sizeof(e->call), rec)
                                                    : bpf_probe_read_user(&e->call, offsetof(struct coral_call, stack), rec);
        if (read != 0) {
            events.ringbuf_discard(e, 0);
            c->stats[ST_UNREADABLE] += 1;
            continue;
        }
        events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
        c->stats[ST_EMITTED] += 1;
    }
    return now;
}

// Attached at every Python site (the SDK's, SITE_PYTHON): a program of its
// own, so that the verifier walks its loop over slots apart from coral_hit's.
int coral_python(struct pt_regs *ctx)
{
    struct site *s = site_of(ctx);
    if (!s || !(s->flags & SITE_PYTHON))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    if (id >> 32 != s->tgid)
        return 0;
    u64 watching = s->slots & ~stopped_slots();
    if (watching)
        charge(watching, python_call(ctx, watching, id));
    return 0;
}

// The id (pid_tgid) of the thread whose frames `st` are: asked once, when
// its stack is new, then kept there. A thread's pid_tgid changes only when
// a thread other than its process's leader calls exec; the leader then
// exits, and the probes of that process with it (they are bound to the
// leader's pid), so a kept id is never asked for again.
static __always_inline u64 thread_id(struct stack *st)
{
    u64 id = st->id;
    if (!id) {
        id = bpf_get_current_pid_tgid();
        st->id = id;
    }
    return id;
}

// Attached at every entry site and every RET and tail JMP site (Go, C++, Rust).
// The site is the probe's (its attach cookie), so a hit asks the kernel for
// its thread's id only where it keeps none: a Go RET (a record's thread).
int coral_hit(struct pt_regs *ctx)
{
    struct site *s = site_of(ctx);
    if (!s)
        return 0;
    u64 watching = s->slots & ~stopped_slots();
    if (!watching)
        return 0;
    if (s->flags & SITE_PYTHON)
        return 0;  // coral_python's
    u64 now = 0;
    u64 ip = PT_REGS_IP(ctx);
    // Frames per goroutine for Go (R14 holds g), per thread otherwise.
    int go = (s->flags & (SITE_GO | SITE_GO_RET)) != 0;
    struct thread_key tk = {.id = s->tgid, .g = 0};
    u64 results[3] = {ctx->ax, ctx->dx, 0};  // System V: RAX, RDX
    if (go) {
        tk.g = ctx->r14;
        results[1] = ctx->bx;  // Go: RAX, RBX, RCX
        results[2] = ctx->cx;
    }
    if (s->flags & (SITE_GO_RET | SITE_RET | SITE_TAIL)) {
        // At a RET, or a JMP to another function, the stack pointer is back
        // where it was at entry (it points at the return address).
        u64 sp = go ? go_frame_sp(ctx) : PT_REGS_SP(ctx);
        int tail = s->flags & SITE_TAIL;
        if (go)  // constant in each copy, as for push_frame
            watching = pop_frame(ctx, &tk, sp, s->func_ip, results, bpf_get_current_pid_tgid(), tail, &now, 1, 0, 0);
        else
            watching = pop_frame(ctx, &tk, sp, s->func_ip, results, 0, tail, &now, 0, 1, s->tgid);
    } else if (go) {
        struct stack *st = stack_of(&tk, 1, 1);
        if (st)
            now = push_frame(st, &tk, watching, ip, ctx, 1, 0, s->held, s->where, s->count_by);  // constant: each copy reads its own ABI's registers
        else
            now = bpf_ktime_get_ns();
    } else {
        struct stack *st = stack_of(&tk, 0, 1);
        if (!st) {
            now = bpf_ktime_get_ns();
        } else {
            u64 id = thread_id(st);
            if (id >> 32 != s->tgid)
                return 0;  // not this site's process
            tk.id = id;
            u32 held = copy_held_at_entry(ctx, s->held, watching, id);  // before the entry's timestamp: not in the duration
            now = push_frame(st, &tk, watching, ip, ctx, 0, s->flags & SITE_URET, held, s->where, s->count_by);
        }
    }
    charge(watching, now);  // charge() does nothing for no slot (an unpaired return: now is 0 then)
    if (s->flags & (SITE_GO_RET | SITE_RET))
        count_kept(ctx);  // coral_count: the call's key, then its stack (does not come back)
    if (s->flags & (SITE_GO_RET | SITE_RET))
        take_stack_if_wanted(ctx);  // no call to count: coral_stack (does not come back)
    if (s->where && !(s->flags & (SITE_GO_RET | SITE_RET | SITE_TAIL)))
        where_calls.call(ctx, 0);  // coral_where: the conditions' values at the entry (does not come back)
    return 0;
}

// uretprobe of native (non-Go) functions: the top frame of this thread.
// Its pid_tgid is the one the thread's entries kept in its stack: not asked
// again (a helper call costs some 20 ns here).
int coral_return(struct pt_regs *ctx)
{
    struct thread_key tk = {.id = 0, .g = 0};
    u64 results[3] = {PT_REGS_RC(ctx), ctx->dx, 0};
    u64 now = 0;
    u64 watching = pop_frame(ctx, &tk, PT_REGS_SP(ctx) - 8, 0, results, 0, 0, &now, 0, 1, 0);
    if (watching)
        charge(watching, now);
    count_kept(ctx);  // coral_count: the call's key, then its stack (does not come back)
    take_stack_if_wanted(ctx);  // no call to count: coral_stack (does not come back)
    return 0;
}
