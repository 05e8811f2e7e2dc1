"""coral-agentd: one per host."""

import os

# numpy (the ring buffer's columns) loads OpenBLAS, which starts a thread
# per CPU at import; the agent does no linear algebra, so it gets none.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
