"""A memory dump is served from its claim's own directory only: the file name the log holds was
written by a node, and one that leads out of the claim is refused, never read."""

from __future__ import annotations

import pytest

from events.errors import ValidationError
from workers.dumps import plain_name


@pytest.mark.parametrize("name", ["../../etc/shadow", "/etc/shadow", "a/b", ".hidden", "", ".."])
def test_a_dump_name_that_leaves_its_claim_is_never_served(name: str) -> None:
    with pytest.raises(ValidationError) as refused:
        plain_name(name)
    assert (refused.value.field, refused.value.message) == (
        "fileName",
        f"the memory dump's file name {name!r} is not a plain file name; nothing served",
    )


def test_a_plain_dump_name_is_served() -> None:
    assert plain_name("r-dump-20261207-061500.memory.dump") == "r-dump-20261207-061500.memory.dump"
