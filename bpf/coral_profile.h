/* The record the profiling program (bpf/coral_profile.c) sends for a
 * sample: shared with coral/agentd/profiler.py, which reads this layout
 * (coral/layouts.py). CORAL_STACK_COPY comes from the compiler's -D flags
 * (the agent's STACK_COPY). */
#ifndef CORAL_PROFILE_H
#define CORAL_PROFILE_H

#include "coral_pystack.h"

struct stack_copy {
    u32 tgid;
    s32 user_stack;           /* the frame-pointer walk of the same sample (a fallback) */
    u64 ip;                   /* the user's registers (for a sample in the kernel, those it entered with) */
    u64 sp;
    u64 bp;
    u32 size;                 /* bytes of `stack` read from sp (0 if none could be) */
    u32 user_mode;            /* ip, sp and bp are the user's */
    u32 pad;
    struct py_stack py;       /* the thread's Python frames (py.depth 0: none, or not a Python process) */
    char stack[CORAL_STACK_COPY];
};

#endif
