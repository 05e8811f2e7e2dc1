"""The payments logic of the example service (payments_service.py): the
function an operator debugs with `coralctl debug attach payments-api
--function payments.validate_card`."""

from __future__ import annotations

import hashlib
import time

DECLINE_OVER_CENTS = 100_000


def validate_card(card: str, amount: int) -> dict[str, object]:
    """Approve a charge of ``amount`` cents on ``card``, or raise
    ValueError("card declined") (cards ending in 7, amounts over 1000.00)."""
    digits = "".join(c for c in card if c.isdigit())
    if len(digits) < 12:
        raise ValueError("invalid card number")
    time.sleep(0.002)  # the card network
    if digits.endswith("7") or amount > DECLINE_OVER_CENTS:
        raise ValueError("card declined")
    auth = hashlib.sha256(f"{digits}:{amount}".encode()).hexdigest()[:8]
    return {"approved": True, "card": f"****{digits[-4:]}", "amount": amount, "auth_code": auth}
