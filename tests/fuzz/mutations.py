"""Hypothesis strategies that mutate JSON manifests and binary files (the fuzz suite's)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "corpus"

CORPUS_EDITS = json.loads((CORPUS / "manifest_mutations.json").read_text())

json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=8)


def key_paths(data, prefix=()) -> list[tuple]:
    """Every key / index path of a JSON value, the root's children first."""
    out = []
    items = (data.items() if isinstance(data, dict)
             else enumerate(data) if isinstance(data, list) else ())
    for k, v in items:
        out.append((*prefix, k))
        out.extend(key_paths(v, (*prefix, k)))
    return out


def _at(data, path):
    for k in path[:-1]:
        data = data[k]
    return data


def apply_edit(data, path, value=None, delete=False):
    """``data`` with the value at ``path`` set (its parents made as dicts) or deleted."""
    out = copy.deepcopy(data)
    parent = out
    for k in path[:-1]:
        if isinstance(parent, dict) and not isinstance(parent.get(k), (dict, list)):
            parent[k] = {}
        parent = parent[k]
    if delete:
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


@st.composite
def mutated_json(draw, original: bytes, fill=lambda s: s) -> bytes:
    """A mutation of the JSON document ``original``: a corpus edit, a value of another type
    at any key, a deleted or renamed key, deep nesting, another encoding, truncation or
    random bytes. ``fill`` resolves the corpus's ``{OUTSIDE}`` placeholders."""
    data = json.loads(original)
    kind = draw(st.sampled_from(["corpus", "corpus", "set", "delete", "rename", "nest",
                                 "encoding", "truncate", "bytes"]))
    if kind == "corpus":
        edit = draw(st.sampled_from(CORPUS_EDITS))
        value = json.loads(fill(json.dumps(edit.get("value"))))
        try:
            data = apply_edit(data, edit["path"], value, edit.get("delete", False))
        except (KeyError, IndexError, TypeError):  # this manifest lacks that key
            pass
        return json.dumps(data).encode()
    paths = key_paths(data)
    if kind == "set":
        data = apply_edit(data, draw(st.sampled_from(paths)), draw(json_values))
    elif kind == "delete":
        data = apply_edit(data, draw(st.sampled_from(paths)), delete=True)
    elif kind == "rename":
        path = draw(st.sampled_from([p for p in paths if isinstance(p[-1], str)]))
        parent = _at(data, path)
        parent[draw(st.text(max_size=10))] = parent.pop(path[-1])
    elif kind == "nest":
        depth = draw(st.sampled_from([50, 5000, 200000]))
        return b'{"model": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "encoding":
        text = json.dumps(data)
        how = draw(st.sampled_from(["utf-16", "utf-8-sig", "utf-32", "latin-1-invalid"]))
        if how == "latin-1-invalid":
            return text.replace('"vim', '"v\xe9m').encode("latin-1", "replace") + b"\xff\xfe"
        return text.encode(how)
    elif kind == "truncate":
        return original[:draw(st.integers(0, len(original) - 1))]
    else:
        return draw(st.binary(max_size=64))
    return json.dumps(data).encode()


@st.composite
def mutated_bytes(draw, original: bytes) -> tuple[str, bytes]:
    """(how, bytes): ``original`` truncated, byte-flipped, zeroed or emptied."""
    how = draw(st.sampled_from(["truncate", "flip", "flip", "zeros", "empty", "append"]))
    n = len(original)
    if how == "truncate":
        return how, original[:draw(st.integers(0, n - 1))]
    if how == "flip":
        data = bytearray(original)
        for at in draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4)):
            data[at] ^= draw(st.integers(1, 255))
        return how, bytes(data)
    if how == "zeros":
        start = draw(st.integers(0, n - 1))
        return how, original[:start] + bytes(min(64, n - start)) + original[start + 64:]
    if how == "append":
        return how, original + draw(st.binary(min_size=1, max_size=32))
    return how, b""


def rehash(manifest_path: Path, file_path: Path) -> None:
    """Record ``file_path``'s real size and sha256 in the export manifest at
    ``manifest_path``, so the mutation passes the integrity check and meets the parsers."""
    data = json.loads(manifest_path.read_text())
    blob = file_path.read_bytes()
    data["files"][file_path.name] = {"sha256": hashlib.sha256(blob).hexdigest(),
                                     "bytes": len(blob)}
    manifest_path.write_text(json.dumps(data))
