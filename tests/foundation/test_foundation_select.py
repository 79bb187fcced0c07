"""Picking files of a folder by glob (p2p.content.select): pure code, table-driven."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.content import FileEntry, Manifest, hash_bytes, sign_manifest
from p2p.content.select import Selection, compile_glob
from p2p.errors import BadInput
from p2p.identity import Identity

PATHS = ["a.txt", "b.bin", "docs/a.txt", "docs/deep/c d.bin", "docs/deep/x/y.txt",
         "a/b", "a/x/b", "a/x/y/b", "ab/b", "[x].txt", "e"]

MATCHES = [
    # pattern, the PATHS it matches
    ("*.txt", {"a.txt", "[x].txt"}),
    ("**/*.txt", {"a.txt", "docs/a.txt", "docs/deep/x/y.txt", "[x].txt"}),
    ("docs/*.txt", {"docs/a.txt"}),
    ("docs/**/*.txt", {"docs/a.txt", "docs/deep/x/y.txt"}),
    ("a/**/b", {"a/b", "a/x/b", "a/x/y/b"}),          # ** is zero components too
    ("a/*/b", {"a/x/b"}),                               # * stays in one component
    ("a*/b", {"a/b", "ab/b"}),
    ("docs", {"docs/a.txt", "docs/deep/c d.bin", "docs/deep/x/y.txt"}),  # a folder: all in it
    ("docs/", {"docs/a.txt", "docs/deep/c d.bin", "docs/deep/x/y.txt"}),
    ("docs/**", {"docs/a.txt", "docs/deep/c d.bin", "docs/deep/x/y.txt"}),
    ("**", set(PATHS)),
    ("?.txt", {"a.txt"}),
    ("?", {"e", "a/b", "a/x/b", "a/x/y/b"}),            # the folder "a" too
    ("[ab].*", {"a.txt", "b.bin"}),
    ("[!a].*", {"b.bin"}),
    ("[a-b].bin", {"b.bin"}),
    ("[[]x].txt", {"[x].txt"}),                         # a literal '[' as fnmatch writes it
    ("docs/deep/c d.bin", {"docs/deep/c d.bin"}),       # spaces are ordinary characters
    ("*", {"a.txt", "b.bin", "[x].txt", "e", "docs/a.txt", "docs/deep/c d.bin",
           "docs/deep/x/y.txt", "a/b", "a/x/b", "a/x/y/b", "ab/b"}),  # top-level names, folders too
    ("*.TXT", set()),                                   # case matters, as on the file system
    ("doc", set()),                                     # a prefix of a name is not its folder
    ("a.txt/**", set()),                                # nothing lies under a file
]


@pytest.mark.parametrize(("pattern", "expected"), MATCHES, ids=[p for p, _ in MATCHES])
def test_a_glob_matches_exactly_these_paths(pattern: str, expected: set[str]) -> None:
    glob = compile_glob(pattern)
    assert {p for p in PATHS if glob.matches(p)} == expected


BAD = [
    ("", "empty pattern"),
    ("/docs", "drop the leading '/'"),
    ("a//b", "empty path component"),
    ("a**", "'**' must be a whole path component"),
    ("**x/b", "'**' must be a whole path component"),
    ("[abc", "never closed"),
    ("[z-a]", "backwards"),
    ("a\\b", "'/'-separated"),
    ("x" * 5000, "longer than"),
]


@pytest.mark.parametrize(("pattern", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_pattern_is_refused_with_its_reason(pattern: str, message: str) -> None:
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace("*", r"\*")):
        compile_glob(pattern)


SELECTIONS = [
    # include, exclude, the PATHS selected
    ((), (), set(PATHS)),                                               # no include: everything
    (("docs",), (), {"docs/a.txt", "docs/deep/c d.bin", "docs/deep/x/y.txt"}),
    (("docs",), ("**/*.bin",), {"docs/a.txt", "docs/deep/x/y.txt"}),
    ((), ("docs", "a", "ab"), {"a.txt", "b.bin", "[x].txt", "e"}),     # exclude only
    (("*.txt", "**/*.bin"), (), {"a.txt", "[x].txt", "b.bin", "docs/deep/c d.bin"}),  # a union
    (("a.txt",), ("a.txt",), set()),                                    # exclude wins
]


@pytest.mark.parametrize(("include", "exclude", "expected"), SELECTIONS)
def test_include_then_exclude(include: tuple[str, ...], exclude: tuple[str, ...],
                              expected: set[str]) -> None:
    selection = Selection(include, exclude)
    assert {p for p in PATHS if selection.matches(p)} == expected
    assert selection.everything == (not include and not exclude)


def test_ticked_paths_are_a_filter_on_top_of_the_globs() -> None:
    selection = Selection(exclude=("**/*.bin",), paths=frozenset({"a.txt", "b.bin"}))
    assert {p for p in PATHS if selection.matches(p)} == {"a.txt"}
    assert not selection.everything
    assert Selection.of_paths([]).matches("a.txt") is False


def test_a_bad_pattern_fails_when_the_selection_is_built() -> None:
    with pytest.raises(BadInput, match="never closed"):
        Selection(exclude=("ok", "[bad"))


ALICE = Identity.from_seed(b"\xa1" * 32)


def _manifest(paths: list[str]) -> Manifest:
    entries = [FileEntry(p, hash_bytes(p.encode())) for p in paths]
    return sign_manifest(ALICE, "dir", "album", entries)


def test_check_names_the_include_that_matches_nothing() -> None:
    manifest = _manifest(["a.txt", "docs/b.bin"])
    assert Selection(("docs/**",)).check(manifest) == [1]
    with pytest.raises(BadInput, match=r"--include '\*\.jpg' matches no file of album"):
        Selection(("docs/**", "*.jpg")).check(manifest)
    with pytest.raises(BadInput, match=r"\(--include a.txt --exclude \*\) matches no file of "
                                        "album: every file it picks is excluded"):
        Selection(("a.txt",), ("*",)).check(manifest)
    with pytest.raises(BadInput, match=r"\(--exclude \*\*\) matches no file"):
        Selection(exclude=("**",)).check(manifest)
    with pytest.raises(BadInput, match="has no file 'nope'"):
        Selection.of_paths(["nope"]).check(manifest)


_name = st.text(alphabet="abc.", min_size=1, max_size=4)


@given(st.lists(_name, min_size=1, max_size=4),
       st.text(alphabet="abc.*?", min_size=1, max_size=5).filter(lambda p: "**" not in p))
def test_a_one_component_pattern_agrees_with_fnmatch_on_the_first_component(
        parts: list[str], pattern: str) -> None:
    """Within one component the glob is fnmatch's (case-sensitive), and it never crosses '/':
    a pattern without '/' picks a path when it matches the path's first component (the
    whole path, or the folder the path lies in)."""
    glob = compile_glob(pattern)
    assert glob.matches("/".join(parts)) == fnmatch.fnmatchcase(parts[0], pattern)


@given(st.lists(st.text(alphabet="ab", min_size=1, max_size=8), min_size=1, max_size=3),
       st.lists(st.text(alphabet="ab*?", min_size=1, max_size=6).filter(lambda p: "**" not in p),
                min_size=1, max_size=3))
def test_a_multi_component_pattern_agrees_with_fnmatch_component_by_component(
        parts: list[str], pattern: list[str]) -> None:
    """Several stars in a component (each taking the first place the rest matches) pick what
    fnmatch picks; the pattern's components match the path's first ones, one for one."""
    expected = len(parts) >= len(pattern) and all(
        fnmatch.fnmatchcase(part, p) for part, p in zip(parts, pattern, strict=False))
    assert compile_glob("/".join(pattern)).matches("/".join(parts)) == expected


@pytest.mark.parametrize("pattern", ["*_*_*_*_*_*_*.jpg", "**/*_*_*_*_*_*_*.jpg"])
def test_names_chosen_against_a_pattern_do_not_make_it_backtrack(pattern: str) -> None:
    # A publisher names folders and files: 255 underscores, 15 levels deep. Matched with
    # backtracking, each star tries every place in the name (255^6 tries per component);
    # each takes the first place that works here, so this ends (the suite's timeout bounds it).
    name = "_" * 255
    deep = "/".join([name] * 15)
    selection = Selection(include=(pattern,))
    assert not selection.matches(deep)
    assert selection.matches(deep[:-4] + ".jpg") == (pattern.startswith("**"))
    assert selection.matches("a_b_c_d_e_f_g.jpg")
