/* coral/sdk/_layout.c: this interpreter's frame layout, for the profiler. */
#ifndef CORAL_SDK_LAYOUT_H
#define CORAL_SDK_LAYOUT_H

/* A dict of offsets (docs/protocol.md, PythonLayout), or None before 3.11. */
PyObject *coral_python_layout(void);

#endif
