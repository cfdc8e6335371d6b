"""The integer-flag check every script shares: one line naming the flag, the bound and the value."""

from __future__ import annotations

import pytest

from classification.errors import ClassificationError, check_int


@pytest.mark.parametrize("value, least, message", [
    (True, None, "--x must be an integer, got True"),  # a bool is not an integer flag
    ("3", None, "--x must be an integer, got '3'"),
    (-1, 0, "--x must be an integer, 0 or more, got -1"),
    (0, 1, "--x must be a positive integer, got 0"),
    (2.0, 1, "--x must be a positive integer, got 2.0"),
    (3, 4, "--x must be an integer of at least 4, got 3"),
])
def test_bad_values_are_one_line(value, least, message):
    with pytest.raises(ClassificationError) as e:
        check_int("--x", value, least)
    assert str(e.value) == message


def test_good_values_pass():
    for value, least in ((-5, None), (0, 0), (1, 1), (4, 4)):
        check_int("--x", value, least)
