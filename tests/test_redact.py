"""The redaction rules (coral/redact.py), both ways: what is secret, and
what is not."""

from __future__ import annotations

import pytest

from coral.redact import REDACTED, Rules

RULES = Rules()


@pytest.mark.parametrize("name", ["user_pw", "apiToken", "Authorization", "password", "db_passwd", "API_KEY",
                                  "x-api-key", "apikey", "privateKey", "private_key", "client_secret",
                                  "sessionCookie", "credentials", "mypassword", "bearer", "card", "card_number"])
def test_secret_names(name: str) -> None:
    assert RULES.is_secret_name(name)


@pytest.mark.parametrize("name", ["session_id", "author", "oauth_url", "user", "amount", "keyboard", "cardinality",
                                  "upward", "passage", "id", ""])
def test_names_that_are_not_secret(name: str) -> None:
    assert not RULES.is_secret_name(name)


@pytest.mark.parametrize(("text", "shown"), [
    ("4111 1111 1111 1111", REDACTED),
    ("'4111-1111-1111-1111'", f"'{REDACTED}'"),
    ("card 4111111111111111 declined", f"card {REDACTED} declined"),
    ("Authorization: Bearer abc.def-ghi", f"Authorization: {REDACTED}"),
    ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_-x ok", f"token {REDACTED} ok"),
    ("login failed: password=hunter2 user=bob", f"login failed: password={REDACTED} user=bob"),
    ("{'api_key': 'k-123', 'n': 3}", f"{{'api_key': {REDACTED}, 'n': 3}}"),
    ('{"token": "abc"}', f'{{"token": {REDACTED}}}'),
    ("card 4111 1111 1111 1111 12/26", f"card {REDACTED} 12/26"),
    ("4111111111111111 5", f"{REDACTED} 5"),
])
def test_secret_values_inside_text(text: str, shown: str) -> None:
    assert RULES.text(text) == shown


@pytest.mark.parametrize("text", ["4111111111111112", "order 12345 of 2026-12-01", "session_id=abc", "author: ann",
                                  "bearing 270", ""])
def test_text_that_is_left_alone(text: str) -> None:
    assert RULES.text(text) == text


def test_a_secret_name_hides_the_whole_value_and_the_list_extends() -> None:
    assert RULES.value("pw", "'x'") == REDACTED and RULES.value("who", "'x'") == "'x'"
    assert Rules((*Rules().names, "ssn")).is_secret_name("customer_ssn") and not RULES.is_secret_name("customer_ssn")
    assert RULES.flags(["a", "token", "b"]) == b"\x00\x01\x00"
