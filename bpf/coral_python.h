// The Python frames of a thread of a CPython 3.11+ process, read from the
// process's own memory by the layout its SDK registered (PythonLayout,
// docs/protocol.md "Process registration"): shared by the profiler
// (bpf/coral_profile.c) and the probes' --stack (bpf/coral_probes.c).
//
#ifndef CORAL_PYTHON_H
#define CORAL_PYTHON_H

#include "coral_pystack.h"  // struct py_stack, CORAL_PY_FRAMES, CORAL_PY_THREADS

// PythonLayout, as the agent writes it (field names as in the proto).
struct py_layout {
    u64 interpreter;
    u32 threads_head, tstate_next, tstate_native_thread_id, tstate_frame;
    u32 cframe_current_frame, via_cframe, frame_code, frame_previous;
    u32 frame_instr, frame_owner, owner_cstack, pad;
};

BPF_HASH(python, u32, struct py_layout, 1024);  // tgid -> its interpreter's layout

static inline u64 py_read_ptr(u64 address)
{
    u64 value = 0;
    if (bpf_probe_read_user(&value, sizeof(value), (void *)address) != 0)
        return 0;
    return value;
}

// The thread state of thread `tid`: the one whose native_thread_id is it.
static inline u64 python_thread(struct py_layout *py, u32 tid)
{
    u64 tstate = py_read_ptr(py->interpreter + py->threads_head);
    // Loops, not unrolled: the verifier walks their bounded iterations.
#pragma clang loop unroll(disable)
    for (int t = 0; t < CORAL_PY_THREADS; t++) {
        if (!tstate || py_read_ptr(tstate + py->tstate_native_thread_id) == tid)
            return tstate;
        tstate = py_read_ptr(tstate + py->tstate_next);
    }
    return 0;  // past the bound
}

// Thread `tid`'s frames into `out`. A shim frame is kept with code 0, which
// the agent leaves out: the index never depends on what was read, which
// keeps the verifier's walk of the loop short.
static inline void python_frames(struct py_stack *out, struct py_layout *py, u32 tid)
{
    u64 tstate = python_thread(py, tid);
    if (!tstate)
        return;  // not a thread the interpreter knows (yet)
    u64 frame = py_read_ptr(tstate + py->tstate_frame);
    if (py->via_cframe && frame)
        frame = py_read_ptr(frame + py->cframe_current_frame);
    u32 depth = 0;
#pragma clang loop unroll(disable)
    for (int f = 0; f < CORAL_PY_FRAMES; f++) {
        if (!frame)
            break;
        u8 owner = 0;
        if (py->frame_owner)
            bpf_probe_read_user(&owner, 1, (void *)(frame + py->frame_owner));
        out->code[f] = owner == py->owner_cstack ? 0 : py_read_ptr(frame + py->frame_code);
        out->instr[f] = py_read_ptr(frame + py->frame_instr);
        depth = f + 1;
        frame = py_read_ptr(frame + py->frame_previous);
    }
    out->depth = depth;
    out->cut = frame != 0;
}

#endif
