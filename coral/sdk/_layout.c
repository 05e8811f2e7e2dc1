/* Where this interpreter keeps what a profiler needs to name the Python
 * functions a thread is running: the offsets of a few fields of its
 * internal structures, as the compiler laid them out for this very build.
 *
 * The agent's sampling program (bpf/coral_profile.c) reads, for a sampled
 * thread: the main interpreter's list of thread states, the one whose
 * native_thread_id is the thread's, its current frame, and up the chain of
 * frames each frame's code object and instruction pointer. The agent then
 * reads the code objects' names and line tables from /proc/PID/mem
 * (coral/agentd/pyframes.py). Nothing here is written or called by them.
 *
 * This file alone is compiled with Py_BUILD_CORE: these structures are
 * CPython's internals (pycore_frame.h, pycore_interp.h) and have no public
 * API. Only offsetof and sizeof are taken; nothing else of the internals is
 * used, so the rest of the extension stays on the public C API.
 * CPython 3.11, 3.12 and 3.13 (3.10 and older keep frames as objects: no
 * layout is given, and a profile shows the interpreter's C functions). */

#define Py_BUILD_CORE 1
#include <Python.h>

#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#include "internal/pycore_interp.h"
#endif

#include <stddef.h>

#include "_layout.h"

#define PUT(dict, key, value)                                               \
    do {                                                                    \
        PyObject *v_ = PyLong_FromUnsignedLongLong((unsigned long long)(value)); \
        if (v_ == NULL || PyDict_SetItemString(dict, key, v_) < 0) {        \
            Py_XDECREF(v_);                                                 \
            Py_DECREF(dict);                                                \
            return NULL;                                                    \
        }                                                                   \
        Py_DECREF(v_);                                                      \
    } while (0)

PyObject *coral_python_layout(void)
{
#if PY_VERSION_HEX < 0x030B0000
    Py_RETURN_NONE;
#else
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    PUT(d, "version_hex", PY_VERSION_HEX);
    PUT(d, "interpreter", (uintptr_t)PyInterpreterState_Main());
    PUT(d, "threads_head", offsetof(PyInterpreterState, threads.head));
    PUT(d, "tstate_next", offsetof(PyThreadState, next));
    PUT(d, "tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
#if PY_VERSION_HEX >= 0x030D0000
    /* 3.13: the thread state points at its current frame. */
    PUT(d, "tstate_frame", offsetof(PyThreadState, current_frame));
    PUT(d, "cframe_current_frame", 0);
    PUT(d, "via_cframe", 0);
    PUT(d, "frame_code", offsetof(_PyInterpreterFrame, f_executable));
    PUT(d, "frame_instr", offsetof(_PyInterpreterFrame, instr_ptr));
#else
    /* 3.11, 3.12: through the C frame of the innermost evaluation loop. */
    PUT(d, "tstate_frame", offsetof(PyThreadState, cframe));
    PUT(d, "cframe_current_frame", offsetof(_PyCFrame, current_frame));
    PUT(d, "via_cframe", 1);
    PUT(d, "frame_code", offsetof(_PyInterpreterFrame, f_code));
    PUT(d, "frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
#endif
    PUT(d, "frame_previous", offsetof(_PyInterpreterFrame, previous));
#if PY_VERSION_HEX >= 0x030C0000
    /* Shim frames the interpreter pushes for C callers: no Python function. */
    PUT(d, "frame_owner", offsetof(_PyInterpreterFrame, owner));
    PUT(d, "owner_cstack", FRAME_OWNED_BY_CSTACK);
#else
    PUT(d, "frame_owner", 0);
    PUT(d, "owner_cstack", 0xFF);
#endif
    PUT(d, "code_qualname", offsetof(PyCodeObject, co_qualname));
    PUT(d, "code_filename", offsetof(PyCodeObject, co_filename));
    PUT(d, "code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    PUT(d, "code_linetable", offsetof(PyCodeObject, co_linetable));
    PUT(d, "code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    PUT(d, "bytes_size", offsetof(PyVarObject, ob_size));
    PUT(d, "bytes_data", offsetof(PyBytesObject, ob_sval));
    PUT(d, "unicode_length", offsetof(PyASCIIObject, length));
    PUT(d, "unicode_state", offsetof(PyASCIIObject, state));
    PUT(d, "unicode_ascii_data", sizeof(PyASCIIObject));
    PUT(d, "unicode_compact_data", sizeof(PyCompactUnicodeObject));
    return d;
#endif
}
