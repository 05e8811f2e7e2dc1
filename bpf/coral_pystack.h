/* A thread's Python frames, as the BPF programs read them (bpf/coral_python.h)
 * for a profile's sample (bpf/coral_profile.c) and a --stack call's stack
 * (bpf/coral_records.h): shared with Python, which reads this layout
 * (coral/layouts.py). */
#ifndef CORAL_PYSTACK_H
#define CORAL_PYSTACK_H

#define CORAL_PY_FRAMES 64    /* frames read; deeper ones are cut */
#define CORAL_PY_THREADS 64   /* thread states looked at to find the sampled thread's */

/* Innermost first: each frame's code object (0: a shim frame, the
 * interpreter's, for a C caller) and instruction pointer. */
struct py_stack {
    u32 depth;                /* frames read */
    u32 cut;                  /* more were there than CORAL_PY_FRAMES */
    u64 code[CORAL_PY_FRAMES];
    u64 instr[CORAL_PY_FRAMES];
};

#endif
