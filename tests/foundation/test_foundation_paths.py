"""Path safety for untrusted manifest paths (p2p.content.paths)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.content import check_relative_path, open_under
from p2p.content.paths import MAX_COMPONENT_BYTES, MAX_DEPTH, MAX_PATH_BYTES
from p2p.errors import BadInput, UnsafePath

WRITE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL
WRITE_ANY = os.O_WRONLY | os.O_CREAT | os.O_TRUNC

# Components and characters that make trouble, mixed with ordinary text.
tricky_parts = st.sampled_from(
    ["", ".", "..", "...", "a", "b.txt", "\\", "..\\..", ":", "C:", "c:\\x", "\x00", "a\x00b",
     "con", "NUL.txt", "com1", "lpt9.log", "a.", "a ", " ", "~", "$HOME", "\u2025", "\uff0e\uff0e",
     "dir/..", "x" * 256]
)
tricky_text = st.text(alphabet=st.sampled_from("/.\\:\x00 aZé~") | st.characters(), max_size=40)
component = tricky_parts | tricky_text
# Mostly-ordinary names (any character but '/', control and Windows-forbidden ones are rare).
plain_component = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters='/\\:<>"|?*', exclude_categories=["Cc"]),
    min_size=1, max_size=20,
)
relative_paths = st.one_of(
    st.lists(plain_component, min_size=1, max_size=8).map("/".join),
    st.lists(plain_component | tricky_parts, min_size=1, max_size=8).map("/".join),
    st.lists(component, min_size=1, max_size=8).map("/".join),
    st.lists(component, min_size=1, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    tricky_text,
)

DEST = Path(tempfile.gettempdir()).resolve() / "p2p-dest-never-created"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("", id="empty"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("//server/share", id="unc-like"),
        pytest.param("..", id="dotdot"),
        pytest.param("../x", id="dotdot-first"),
        pytest.param("a/../../x", id="dotdot-inner"),
        pytest.param("a/..", id="dotdot-last"),
        pytest.param(".", id="dot"),
        pytest.param("./a", id="dot-first"),
        pytest.param("a/./b", id="dot-inner"),
        pytest.param("a//b", id="empty-component"),
        pytest.param("a/", id="trailing-slash"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\x7fb", id="del"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("..\\..\\evil", id="backslash-dotdot"),
        pytest.param("C:", id="drive"),
        pytest.param("C:evil", id="drive-relative"),
        pytest.param("file.txt:stream", id="ads"),
        pytest.param("a<b", id="lt"),
        pytest.param('a"b', id="quote"),
        pytest.param("a|b", id="pipe"),
        pytest.param("a?b", id="question"),
        pytest.param("a*b", id="star"),
        pytest.param("CON", id="con"),
        pytest.param("con", id="con-lower"),
        pytest.param("nul.txt", id="nul-dot-txt"),
        pytest.param("dir/COM1", id="com1-nested"),
        pytest.param("com1.tar.gz", id="com1-ext"),
        pytest.param("LPT9", id="lpt9"),
        pytest.param("aux .txt", id="aux-space"),
        pytest.param("conin$", id="conin"),
        pytest.param("COM\u00b9", id="com-superscript"),
        pytest.param("name.", id="trailing-dot"),
        pytest.param("name ", id="trailing-space"),
        pytest.param("dir./x", id="trailing-dot-folder"),
        pytest.param("x" * (MAX_COMPONENT_BYTES + 1), id="long-component"),
        pytest.param("\u00e9" * 128, id="long-component-utf8"),  # 256 bytes
        pytest.param("/".join(["d" * 200] * 21), id="long-path"),
        pytest.param("/".join(["d"] * (MAX_DEPTH + 1)), id="too-deep"),
        pytest.param("a\ud800b", id="surrogate"),
    ],
)
def test_rejected_paths(path: str) -> None:
    with pytest.raises(UnsafePath) as info:
        check_relative_path(path)
    assert isinstance(info.value, BadInput)
    assert "manifest" in str(info.value)


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("a", ("a",)),
        ("a/b/c.txt", ("a", "b", "c.txt")),
        (".hidden", (".hidden",)),
        ("...a", ("...a",)),
        ("a..b", ("a..b",)),
        (" leading space", (" leading space",)),
        ("console.log", ("console.log",)),  # not a device: the stem is "console"
        ("COM10", ("COM10",)),
        ("caf\u00e9/\u65e5\u672c", ("caf\u00e9", "\u65e5\u672c")),
        ("x" * MAX_COMPONENT_BYTES, ("x" * MAX_COMPONENT_BYTES,)),
        ("/".join(["d"] * MAX_DEPTH), ("d",) * MAX_DEPTH),
    ],
)
def test_accepted_paths(path: str, parts: tuple[str, ...]) -> None:
    assert check_relative_path(path) == parts


def test_path_length_limit_is_in_bytes() -> None:
    # 15 components of 255 bytes, one of 254, 15 slashes: 4094 bytes.
    base = "/".join(["x" * 255] * 15 + ["x" * 254])
    assert len(base) == MAX_PATH_BYTES - 2
    check_relative_path(base + "/y")  # 4096 bytes exactly: within the limit
    with pytest.raises(UnsafePath, match="path longer than"):
        check_relative_path(base + "/yz")
    with pytest.raises(UnsafePath, match="path longer than"):
        check_relative_path(base + "/\u00e9")  # 4097 bytes, 4096 characters


@settings(max_examples=500)
@given(relative_paths)
def test_accepted_paths_stay_inside_the_destination(path: str) -> None:
    try:
        parts = check_relative_path(path)
    except UnsafePath:
        return
    assert "/".join(parts) == path
    for part in parts:
        assert part not in ("", ".", "..")
        assert not set(part) & set("\\:\x00")
    joined = os.path.normpath(os.path.join(DEST, path))
    assert joined.startswith(str(DEST) + os.sep)
    assert os.path.commonpath([joined, DEST]) == str(DEST)
    resolved = (DEST / path).resolve()
    assert resolved.is_relative_to(DEST) and resolved != DEST
    assert len(resolved.relative_to(DEST).parts) == len(parts)


# -- open_under -------------------------------------------------------------------------


def _write_under(root: Path, relpath: str, data: bytes, flags: int = WRITE_NEW) -> None:
    fd = open_under(root, relpath, flags)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_open_under_creates_nested_files(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    _write_under(dest, "a/b/c.txt", b"deep")
    _write_under(dest, "a/b/d.txt", b"sibling")
    _write_under(dest, "top", b"top")
    assert (dest / "a/b/c.txt").read_bytes() == b"deep"
    assert (dest / "a/b/d.txt").read_bytes() == b"sibling"
    assert _all_files(tmp_path) == {"dest", "dest/a", "dest/a/b", "dest/a/b/c.txt",
                                    "dest/a/b/d.txt", "dest/top"}
    mode = stat.S_IMODE((dest / "top").stat().st_mode)
    assert mode == 0o644 & ~_umask()
    with pytest.raises(FileExistsError):  # the caller's flags are honoured
        open_under(dest, "top", WRITE_NEW)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """A destination and an outside folder, with nothing in the outside folder yet."""
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    return dest, outside


def test_open_under_refuses_a_folder_symlink(planted: tuple[Path, Path]) -> None:
    dest, outside = planted
    (dest / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePath, match="link"):
        _write_under(dest, "evil/payload.txt", b"pwned")
    assert list(outside.iterdir()) == []


def test_open_under_refuses_a_deeper_folder_symlink(planted: tuple[Path, Path]) -> None:
    dest, outside = planted
    (dest / "a" / "b").mkdir(parents=True)
    (dest / "a" / "b" / "c").symlink_to(outside)
    with pytest.raises(UnsafePath):
        _write_under(dest, "a/b/c/d/payload.txt", b"pwned")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    ("target_exists", "flags", "refusal"),
    [
        pytest.param(True, WRITE_ANY, UnsafePath, id="existing-trunc"),
        pytest.param(True, os.O_WRONLY | os.O_APPEND, UnsafePath, id="existing-append"),
        pytest.param(True, os.O_RDWR, UnsafePath, id="existing-rdwr"),
        pytest.param(False, WRITE_ANY, UnsafePath, id="dangling-create"),
        # With O_EXCL the kernel itself refuses any existing name, links included.
        pytest.param(True, WRITE_NEW, FileExistsError, id="existing-excl"),
        pytest.param(False, WRITE_NEW, FileExistsError, id="dangling-excl"),
    ],
)
def test_open_under_refuses_a_final_file_symlink(
    planted: tuple[Path, Path], target_exists: bool, flags: int, refusal: type[Exception]
) -> None:
    dest, outside = planted
    target = outside / "victim.txt"
    if target_exists:
        target.write_bytes(b"original")
    (dest / "file.txt").symlink_to(target)
    with pytest.raises(refusal):
        _write_under(dest, "file.txt", b"pwned", flags)
    if target_exists:
        assert target.read_bytes() == b"original"
    else:
        assert not target.exists()
    assert [p.name for p in outside.iterdir()] == (["victim.txt"] if target_exists else [])


def test_open_under_refuses_a_file_where_a_folder_should_be(planted: tuple[Path, Path]) -> None:
    dest, _ = planted
    (dest / "a").write_bytes(b"i am a file")
    with pytest.raises(UnsafePath, match="not a folder"):
        _write_under(dest, "a/b.txt", b"x")
    assert (dest / "a").read_bytes() == b"i am a file"


@pytest.mark.parametrize("relpath", ["../escape.txt", "/tmp/escape.txt", "a/../../escape.txt",
                                     "a\\..\\escape.txt"])
def test_open_under_checks_the_path_before_touching_the_disk(
    planted: tuple[Path, Path], relpath: str
) -> None:
    dest, outside = planted
    with pytest.raises(UnsafePath):
        _write_under(dest, relpath, b"x")
    assert list(dest.iterdir()) == []
    assert list(outside.iterdir()) == []


def test_open_under_trusts_a_symlinked_root(planted: tuple[Path, Path]) -> None:
    dest, outside = planted
    chosen = dest / "chosen-by-the-person"
    chosen.symlink_to(outside)
    _write_under(chosen, "a/b.txt", b"ok")
    assert (outside / "a" / "b.txt").read_bytes() == b"ok"


@settings(max_examples=80, deadline=None)
@given(st.lists(plain_component, min_size=1, max_size=6).map("/".join))
def test_open_under_writes_only_inside(relpath: str) -> None:
    try:
        parts = check_relative_path(relpath)
    except UnsafePath:
        return
    with tempfile.TemporaryDirectory() as top:
        dest = Path(top) / "dest"
        dest.mkdir()
        _write_under(dest, relpath, b"data")
        assert (dest.joinpath(*parts)).read_bytes() == b"data"
        assert {p.name for p in Path(top).iterdir()} == {"dest"}
        written = [p for p in dest.rglob("*") if p.is_file()]
        assert written == [dest.joinpath(*parts)]


def test_open_under_keeps_the_folders_it_walked_for_the_caller(planted: tuple[Path, Path]) -> None:
    """With ``folders``, the file's folder is walked to once and its descriptor kept: the next
    file there is opened from it; a folder not kept is walked again, a link in it still refused."""
    dest, outside = planted
    folders: dict[str, int] = {}
    try:
        os.close(open_under(dest, "a/b/one.txt", WRITE_NEW, folders=folders))
        assert list(folders) == ["a/b"]
        kept = folders["a/b"]
        os.close(open_under(dest, "a/b/two.txt", WRITE_NEW, folders=folders))
        assert folders == {"a/b": kept}  # taken from there, not walked again
        assert os.path.samestat(os.fstat(kept), (dest / "a" / "b").stat())
        os.close(open_under(dest, "top.txt", WRITE_NEW, folders=folders))  # the root: nothing kept
        assert list(folders) == ["a/b"]
        (dest / "a" / "evil").symlink_to(outside, target_is_directory=True)
        with pytest.raises(UnsafePath, match="link"):
            open_under(dest, "a/evil/payload.txt", WRITE_NEW, folders=folders)
        assert list(folders) == ["a/b"] and list(outside.iterdir()) == []
    finally:
        for fd in folders.values():
            os.close(fd)
    assert _all_files(dest) == {"a", "a/b", "a/b/one.txt", "a/b/two.txt", "a/evil", "top.txt"}
