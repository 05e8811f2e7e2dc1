/* The record a Python SDK process hands to its probe site, one per call of
 * an armed function. Shared by the SDK's extension (coral/sdk/_probe.c) and
 * the agent's BPF program (bpf/coral_probes.c): change both together.
 *
 * Text fields hold bounded, already-redacted reprs:
 *   args: "name=repr" entries separated by '\0', args_len bytes used
 *   ret:  the return value's repr, or "ExceptionType: message" when raised
 */
#ifndef CORAL_CALL_H
#define CORAL_CALL_H

#define CORAL_ARGS_MAX 512
#define CORAL_RET_MAX 256
#define CORAL_PYSTACK_MAX 1024      /* --stack: the caller's Python frames, as text */

#define CORAL_CALL_RAISED 0x1       /* the call raised; ret holds the exception */
#define CORAL_CALL_TRUNCATED 0x2    /* some repr was cut to fit */
/* The function's --where condition (coral/sdk/where.py) decided the call is
 * not shown: only the header is filled; the BPF program counts the call and
 * sends nothing. */
#define CORAL_CALL_FILTERED 0x4     /* the condition is false */
#define CORAL_CALL_WHERE_ERROR 0x8  /* the condition could not be evaluated */
/* --count-by (coral/sdk/countby.py): the SDK counted the call by its key; the
 * BPF program counts it and sends nothing, as for a filtered call, and it is lost to no cause. */
#define CORAL_CALL_COUNTED 0x10
/* --stack: `stack` holds the call's Python frames, stack_len bytes: the
 * function's own first, then its caller's, outward; one line each,
 * "qualname\tfile\tline", lines ended by '\n'. The BPF program copies
 * `stack` only when this is set. */
#define CORAL_CALL_STACK 0x20
#define CORAL_CALL_STACK_CUT 0x40   /* frames beyond those in `stack` were left out */

struct coral_call {
    unsigned long long fn_id;     /* from ArmFunctionRequest.fn_id */
    unsigned long long call_id;   /* per process, increasing */
    unsigned long long start_ns;  /* CLOCK_MONOTONIC, the clock bpf_ktime_get_ns reads */
    unsigned long long end_ns;
    unsigned int flags;
    unsigned int args_len;
    unsigned int ret_len;
    unsigned int stack_len;
    char args[CORAL_ARGS_MAX];
    char ret[CORAL_RET_MAX];
    char stack[CORAL_PYSTACK_MAX];
};

#endif
