"""Which versions load: latest N, all, specific numbers; the default version always among them."""

from __future__ import annotations

import pytest

from server.control.version_set import VersionSet


@pytest.mark.parametrize(
    ("text", "default", "want"),
    [
        ("", 2, [2]),
        ("latest:2", 1, [1, 3, 4]),  # the policy's pick (best, say) is loaded beside the window
        ("latest:2", 4, [3, 4]),
        ("all", None, [1, 2, 3, 4]),
        ("specific:1,3,9", 4, [1, 3, 4]),  # 9 is not in the store
    ],
)
def test_select(text: str, default: int | None, want: list[int]) -> None:
    assert VersionSet.parse(text).select([1, 2, 3, 4], default) == want


@pytest.mark.parametrize("bad", ["latest", "latest:0", "some", "specific:", "specific:0"])
def test_bad_forms_say_what_is_allowed(bad: str) -> None:
    with pytest.raises(ValueError, match=r"versions|version numbers|at least 1"):
        VersionSet.parse(bad)


def test_round_trip_and_mirror_retention() -> None:
    for text in ("", "latest:3", "all", "specific:1,2"):
        assert str(VersionSet.parse(text)) == text
    assert VersionSet.parse("latest:3").mirror_keep(2) == 4
    assert VersionSet.parse("").mirror_keep(2) == 2
    assert VersionSet.parse("all").mirror_keep(2) is None
