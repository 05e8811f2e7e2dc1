/* The records the BPF program (bpf/coral_probes.c) puts in its ring
 * buffer, one per completed call. This header is their one definition: the
 * agent reads it to decode them (coral/layouts.py builds its struct formats
 * from these declarations, and tests/test_layouts.py checks them against the
 * C compiler's offsets). Keep to what coral/layouts.py reads: u32/s32/u64/s64,
 * char, arrays of them, and struct coral_call.
 */
#ifndef CORAL_RECORDS_H
#define CORAL_RECORDS_H

#include "coral_call.h"
#include "coral_pystack.h"	/* struct py_stack: a --stack call's Python frames */

/* Argument registers copied at a native entry: System V's six (RDI, RSI,
 * RDX, RCX, R8, R9; the last three stay 0), or Go's nine (RAX, RBX, RCX,
 * RDI, RSI, R8, R9, R10, R11). */
#define CORAL_ARG_REGS 9

/* Bytes of a Go call's stack-assigned arguments copied at its entry, from
 * the stack pointer + 8 (after the return address). */
#define CORAL_STACK_BYTES 128

/* Bytes of a Go call's stack-assigned results copied at its RET, from the
 * start of the result area (after the stack-assigned arguments). */
#define CORAL_STACK_RET_BYTES 128

/* A string slot's pointer (slot_config.str_arg, str_ret) taken from the
 * record's stack bytes rather than a register: CORAL_FROM_STACK plus its
 * offset in `stack` (arguments) or `stack_ret` (results). */
#define CORAL_FROM_STACK 16

#ifndef CORAL_STR_MAX
#define CORAL_STR_MAX 64             /* [sessions] string_bytes */
#endif

struct native_event {
    u32 type;                        /* EV_NATIVE, or EV_NATIVE_GO (then a native_go_event) */
    u32 slot;
    u32 pid;
    u32 tid;
    u64 start_ns;
    u64 duration_ns;
    u64 results[3];                  /* RAX, RDX (C) or RAX, RBX, RCX (Go; the rest in native_go_tail) */
    u64 args[CORAL_ARG_REGS];
    char strs[2][CORAL_STR_MAX];     /* strings the arguments, then the result, point at (slot_config) */
    u32 unread;                      /* bit i: strs[i] could not be read (its page not in memory yet) */
    u32 pad;
    u64 lens[2];                     /* a string held in an object (std::string, Rust String): its whole length */
    char stack[CORAL_STACK_BYTES];   /* the stack-assigned arguments, as at the entry (slot_config.stack_len) */
};

/* What only a Go call's record carries: C, C++ and Rust records are
 * native_event alone, so they are not made larger by it. */
struct native_go_tail {
    u64 results[6];                  /* RDI, RSI, R8-R11: Go's result registers after RCX */
    char stack_ret[CORAL_STACK_RET_BYTES]; /* the stack-assigned results, at the RET (slot_config.ret_stack_len) */
};

struct native_go_event {
    struct native_event e;
    struct native_go_tail go;
};

struct native_timing_event {         /* a native call with only its timing to show: 32 bytes, not 408 */
    u32 type;                        /* EV_NATIVE_TIMING */
    u32 slot;
    u32 pid;
    u32 tid;
    u64 start_ns;
    u64 duration_ns;
};

struct python_event {
    u32 type;                        /* EV_PYTHON */
    u32 slot;
    u32 pid;
    u32 tid;
    struct coral_call call;
};

struct python_timing_event {
    u32 type;                        /* EV_PYTHON_TIMING */
    u32 slot;
    u32 pid;
    u32 tid;
    u64 head[5];                     /* fn_id, call_id, start_ns, end_ns, flags */
};

/* --stack: one of these follows a call's records, reserved by coral_stack
 * (bpf/coral_probes.c) at the call's return, right after them. Either the
 * kernel's frame-pointer walk (EV_STACK_WALK: ips), or the registers and a
 * bounded copy of the stack from sp for the agent to unwind with .eh_frame
 * (EV_STACK_COPY: coral/agentd/unwind.py). The agent pairs it with the
 * call's records by (pid, tid, start_ns). */
#define CORAL_STACK_IPS 127          /* the kernel's own walk gives at most 127 (perf_event_max_stack) */
#define CORAL_STACK_COPY 8192        /* UprobeConfig.stack_bytes at most */

struct stack_head {
    u32 type;                        /* EV_STACK_WALK, EV_STACK_COPY */
    u32 at_ret;                      /* 1: ip is the probed function's RET, sp points at the return address;
                                        0: ip is the caller's, just returned to (uretprobe) */
    u32 pid;
    u32 tid;
    u64 start_ns;                    /* the call's: its records' start_ns */
    u64 slots;                       /* bit i: slot i submitted a record of this call */
    u64 ip;
    u64 sp;
    u64 bp;
    u64 ret;                         /* the word at sp (the return address, at a RET) */
    s64 size;                        /* bytes of ips or copy written; < 0: none could be (an errno) */
};

struct stack_walk_event {
    struct stack_head head;
    struct py_stack py;              /* in a Python process: the thread's Python frames (py.depth 0: none) */
    u64 ips[CORAL_STACK_IPS];        /* innermost first */
};

struct stack_copy_event {
    struct stack_head head;
    struct py_stack py;              /* as in stack_walk_event */
    char copy[CORAL_STACK_COPY];     /* the stack from sp */
};

#endif
