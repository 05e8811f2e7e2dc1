"""The Coral Python SDK: opt a service in to live debugging.

    import coral.sdk
    coral.sdk.init(service="payments-api")

That is all a service does. The SDK then answers the local agent's
requests on its own socket: which functions exist, their metadata, and arm
or disarm one of them so that each call is recorded while a debugging
session is attached (docs/sdk-guide.md).

The names below load on first use, so importing a submodule (coral-run uses
coral.sdk.registration) does not load the C extension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coral.sdk.lifecycle import Sdk, current, init, shutdown

__all__ = ["Sdk", "current", "init", "shutdown"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from coral.sdk import lifecycle

        return getattr(lifecycle, name)
    raise AttributeError(f"module 'coral.sdk' has no attribute {name!r}")
