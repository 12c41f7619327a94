"""A file list (`.txt`): `relative/path label` per line, paths relative to the list's folder. Version 2,
what `relic-fast index` writes (`file_list_text`), opens with a header naming the format and the classes:
    #relic-fast file-list 2
    #class 0 n01440764
    #class 1 n01443537
    n01440764/n01440764_10026.JPEG 0
The first line names the version; `#class <index> <name>` lines follow it in index order (the name is the rest
of the line after the one space that follows the index, so it may hold spaces). Quoting (version 2): a path or
class name that is empty, starts with `#`, `"` or a space, ends with a space, or holds any character
`str.isprintable` rejects (tab, line break, a non-ASCII space, a control character) is written as a JSON string
literal, ASCII only (`json.dumps`): `"#x/ a.jpg" 0`, `#class 0 " cat"`; every other name is written as it is.
So every name the folder reader accepts comes back unchanged; a name that is not valid UTF-8 cannot be written
(`relic-fast index` names, counts and skips such files). A list without the header (version 1) still reads,
unquoted, its classes named "0".."N-1"; in either version any other `#` line is a comment and blank lines are
skipped. A relative path that climbs out of the list's folder (`../imgs/a.jpg`) is read as the absolute path it
names, normalized as `os.path.normpath` does. (DALI's own `file_list=` argument does not skip `#` lines;
relic-fast's readers pass the files themselves.)
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path

from dali_pipelines.formats.base import DatasetError, DatasetSpec, numbered_names, resolve_masks
from dali_pipelines.formats.image_files import ImageFiles

FILE_LIST_HEADER = "#relic-fast file-list"
"""First line of a versioned file list, followed by the version number."""

FILE_LIST_VERSION = 2
"""The file-list version this module writes (and the newest it reads)."""

_CLASS_LINE = re.compile(r"#class (\d+) (.+)")
_JSON_DECODER = json.JSONDecoder()

def _list_header(path: Path, lines: list[str]) -> tuple[list[str], list[str], int]:
    """(class names, their `file:row`, index of the first line after the header) of a file list; a list
    without the version line (version 1) has no header and names no classes."""
    if not lines or not lines[0].startswith(FILE_LIST_HEADER):
        return [], [], 0
    version = lines[0][len(FILE_LIST_HEADER):].strip()
    if not version.isdigit():
        raise DatasetError(f"{path}:1: expected '{FILE_LIST_HEADER} <version>', got {lines[0]!r}")
    if int(version) > FILE_LIST_VERSION:
        raise DatasetError(f"{path}:1: file-list version {version} is newer than this relic-fast reads "
                           f"({FILE_LIST_VERSION}); upgrade relic-fast")
    names, sources, number = [], [], 1
    while number < len(lines) and lines[number].startswith("#class "):
        match = _CLASS_LINE.fullmatch(lines[number])
        if match is None or int(match.group(1)) != len(names):
            raise DatasetError(f"{path}:{number + 1}: expected '#class {len(names)} <name>', got {lines[number]!r}")
        name = _class_name(path, number + 1, match.group(2))
        if name in names:
            raise DatasetError(f"{path}:{number + 1}: class {name!r} is named twice "
                               f"(first at {sources[names.index(name)]})")
        names.append(name)
        sources.append(f"{path}:{number + 1}")
        number += 1
    return names, sources, number


def _class_name(path: Path, row: int, text: str) -> str:
    """The name a `#class` line records: the rest of the line, or the JSON string literal that is all of it
    (quoting, module docstring)."""
    if not text.startswith('"'):
        return text
    try:
        name, end = _JSON_DECODER.raw_decode(text)
    except ValueError as err:
        raise DatasetError(f"{path}:{row}: a class name that opens with '\"' must be a JSON string literal "
                           f"({err.msg}), got {text!r}") from None
    if end != len(text) or not name:
        raise DatasetError(f"{path}:{row}: expected one non-empty JSON string literal after the class index, "
                           f"got {text!r}")
    return name


_LABEL = re.compile(r"-?[0-9]+")


def _list_line(path: Path, number: int, line: str, quoting: bool) -> tuple[str, int]:
    """(path, label) of one `path label` line; with `quoting` (version 2) a path opening with `"` is a JSON
    string literal (module docstring), any other path runs up to the whitespace before the label."""
    if quoting and line.startswith('"'):
        try:
            file, end = _JSON_DECODER.raw_decode(line)
        except ValueError as err:
            raise DatasetError(f"{path}:{number}: a path that opens with '\"' must be a JSON string literal "
                               f"({err.msg}), got {line!r}") from None
        label = line[end:]
        if not label[:1].isspace():
            raise DatasetError(f"{path}:{number}: expected '\"quoted path\" label', got {line!r}")
        label = label.strip()
    else:
        parts = line.rstrip().rsplit(maxsplit=1)
        file, label = (parts[0].strip(), parts[1]) if len(parts) == 2 else ("", "")
    if not file or not _LABEL.fullmatch(label):
        raise DatasetError(f"{path}:{number}: expected 'relative/path label', got {line!r}")
    return file, int(label)


def _list_entry(root: Path, entry: str) -> str:
    """A list entry as the dataset keeps it: as written, except a relative path that climbs out of the
    list's folder (`../imgs/a.jpg`), which becomes the absolute path it names, normalized, so that it
    still has a place in a mask tree (`mask_file`). `root` is resolved (`resolve_dataset`), so its `..`
    is its real parent."""
    if ".." not in entry or entry.startswith("/"):
        return entry
    normalized = posixpath.normpath(entry)
    if normalized == ".." or normalized.startswith("../"):
        return posixpath.normpath(posixpath.join(os.fspath(root), entry))
    return entry


class FileList(ImageFiles):
    """A text list of `path label` lines (paths may contain spaces; the label is last), after an optional
    version-2 header naming the classes; in a version-2 list a path may be quoted (module docstring)."""

    name = "file_list"
    description = "a file list"

    def detects(self, path: Path, entries: list[os.DirEntry] | None) -> bool:
        return entries is None

    def resolve(self, path: Path, *, masks: str, labels: str) -> DatasetSpec:
        if not path.is_file():
            raise DatasetError(f"{path} is not a file list (format 'file_list')")
        try:
            # split at "\n" only: str.splitlines also breaks at \x0b, \x1c or U+2028, which a name may hold
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path}: not a UTF-8 text file list ({err.reason} at byte {err.start})") from None
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        names, sources, start = _list_header(path, lines)
        root = path.parent
        files, indices = [], []
        for number, line in enumerate(lines[start:], start=start + 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            file, label = _list_line(path, number, line, quoting=start > 0)
            if names and label >= len(names):
                raise DatasetError(f"{path}:{number}: label {label}, but the header names {len(names)} classes")
            files.append(_list_entry(root, file))
            indices.append(label)
        if not files:
            raise DatasetError(f"{path}: the file list is empty")
        if not names:
            names = numbered_names(indices)
        return DatasetSpec(self, root, files, indices, [], resolve_masks(root, masks), names, len(files),
                           sources)


def file_list_text(paths: Sequence[str], labels: Sequence[int], class_names: Sequence[str]) -> str:
    """A version-2 file list (module docstring): the header naming `class_names`, then `path label` lines,
    each path and name quoted where it needs it (`list_field`). What `relic-fast index` writes; `FileList`
    reads it back to the same files, labels and names. An empty class name, or a path or name that is not
    valid UTF-8 (filter those with `can_record`), is a `DatasetError` naming it."""
    for index, name in enumerate(class_names):
        if not name:
            raise DatasetError(f"class {index} has an empty name, which a file list cannot record")
    header = [f"{FILE_LIST_HEADER} {FILE_LIST_VERSION}\n"]
    header += [f"#class {index} {list_field(name)}\n" for index, name in enumerate(class_names)]
    text = "".join(header) + "".join(f"{list_field(path)} {label}\n" for path, label in zip(paths, labels))
    try:
        text.encode("utf-8")  # one pass over the whole text; the name at fault is looked for only on failure
    except UnicodeEncodeError:
        bad = next(value for value in [*class_names, *paths] if not can_record(value))
        raise DatasetError(f"{displayed_name(bad)}: the name is not valid UTF-8, which a file list cannot "
                           f"record") from None
    return text


def list_field(text: str) -> str:
    """How a version-2 file list writes a path or class name (module docstring, quoting): as it is, or as an
    ASCII JSON string literal when it is empty, starts with `#`, `"` or a space, ends with a space, or holds
    a character `str.isprintable` rejects; so a reader never takes it for a comment, trims it, or breaks
    its line."""
    if not text or text[0] in '#" ' or text[-1] == " " or not text.isprintable():
        return json.dumps(text)
    return text


def can_record(name: str) -> bool:
    """Whether a file list can hold `name`: it must be valid UTF-8. A file name that is not arrives from the
    OS with surrogate escapes, which neither UTF-8 text nor DALI's path strings carry."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def displayed_name(name: str) -> str:
    """`name` fit for a message or a UTF-8 report: each byte that is not valid UTF-8 shown as `\\xNN` (what
    the file system holds), instead of a surrogate that printing it would choke on."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


