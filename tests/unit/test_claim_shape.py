"""The claim builds ClaimedMessage from each returned row by position: the order must match."""

from dataclasses import fields

from comms.dispatch.queue import _RETURNING, ClaimedMessage


def test_the_claims_returned_columns_are_claimed_messages_fields_in_order() -> None:
    assert [column.key for column in _RETURNING] == [f.name for f in fields(ClaimedMessage)]
