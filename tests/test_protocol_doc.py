"""docs/worker-protocol.md agrees with the one definition of the protocol version and
the feature list (headwater.wire: PROTOCOL_VERSION, SERVER_FEATURES), and so does the
Node.js worker, which cannot import them."""

from __future__ import annotations

import re
from pathlib import Path

from headwater.wire import PROTOCOL_VERSION, SERVER_FEATURES, Feature

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "worker-protocol.md"
NODE_WORKER_LIB = REPO / "examples" / "node_worker" / "lib"

_ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| (?P<negotiated>yes|no) \| (?P<meaning>.+) \|$")
# Every way the doc states the version: "(version 1)", "speaks version 1",
# "protocol_version = 1", "`protocol_version != 1`", "Must be `1`", "`1`: always".
_VERSIONS = re.compile(
    r"\(version (\d+)\)|\bversion (\d+)\b|protocol_version\s*!?=\s*(\d+)"
    r"|Must be `(\d+)`|^\| `protocol_version` \| `(\d+)`",
    re.MULTILINE,
)


def documented_features(text: str) -> list[tuple[str, bool, str]]:
    """The rows of the table in section 4.1: (name, negotiated, meaning)."""
    section = re.search(r"^### 4\.1 Features\n(.*?)^#", text, re.MULTILINE | re.DOTALL)
    assert section, "docs/worker-protocol.md has no '### 4.1 Features' section"
    rows = []
    for line in section.group(1).splitlines():
        row = _ROW.match(line)
        if row:
            rows.append((row["name"], row["negotiated"] == "yes", row["meaning"].strip()))
    assert rows, "section 4.1 has no feature table rows (| `name` | yes/no | meaning |)"
    return rows


def feature_drift(text: str, features: tuple[Feature, ...]) -> list[str]:
    """What the doc's feature table gets wrong about ``features`` (empty: nothing)."""
    rows = documented_features(text)
    documented = [name for name, _, _ in rows]
    code = [f.name for f in features]
    problems = [
        f"the doc lists {n!r}, which the server does not announce"
        for n in documented
        if n not in code
    ]
    problems += [
        f"the doc does not list {n!r}, which the server announces"
        for n in code
        if n not in documented
    ]
    if not problems and documented != code:
        problems.append(f"the doc lists the features as {documented}; the server sends {code}")
    negotiated = {f.name: f.negotiated for f in features}
    for name, flag, meaning in rows:
        if name in negotiated and negotiated[name] != flag:
            problems.append(f"the doc says {name!r} is {'' if flag else 'not '}negotiated")
        if not meaning:
            problems.append(f"the doc does not say what {name!r} means")
    return problems


def versions_stated(text: str) -> list[int]:
    return [int(next(g for g in m.groups() if g)) for m in _VERSIONS.finditer(text)]


def test_the_doc_lists_exactly_the_features_the_server_announces() -> None:
    assert feature_drift(DOC.read_text(), SERVER_FEATURES) == []


def test_the_feature_check_fails_when_the_doc_or_the_code_drifts() -> None:
    text = DOC.read_text()
    extra = (*SERVER_FEATURES, Feature("teleport", "attempts move between workers"))
    assert feature_drift(text, extra) == [
        "the doc does not list 'teleport', which the server announces"
    ]
    assert feature_drift(text, SERVER_FEATURES[:-1]) == [
        f"the doc lists {SERVER_FEATURES[-1].name!r}, which the server does not announce"
    ]
    assert text.count("| `batch` | yes |") == 1
    flipped = text.replace("| `batch` | yes |", "| `batch` | no |")
    assert feature_drift(flipped, SERVER_FEATURES) == ["the doc says 'batch' is not negotiated"]
    first, second = (f"| `{f.name}` |" for f in SERVER_FEATURES[:2])
    swapped = text.replace(first, "\0").replace(second, first).replace("\0", second)
    assert "the server sends" in feature_drift(swapped, SERVER_FEATURES)[0]


def test_the_doc_states_the_code_s_protocol_version_everywhere() -> None:
    text = DOC.read_text()
    assert text.startswith(f"# Worker protocol (version {PROTOCOL_VERSION})\n")
    stated = versions_stated(text)
    assert len(stated) >= 5, stated  # title, Hello, Welcome, status codes, checklist...
    assert set(stated) == {PROTOCOL_VERSION}, stated
    assert versions_stated(text.replace("(version 1)", "(version 2)")).count(2) == 1


def test_the_node_worker_speaks_the_same_version_and_only_known_features() -> None:
    """The Node.js worker hard-codes its protocol version (and would hard-code any
    feature it listed in Hello.features): tie both to the Python definition."""
    source = (NODE_WORKER_LIB / "worker.js").read_text()
    (version,) = re.findall(r"^const PROTOCOL_VERSION = (\d+);$", source, re.MULTILINE)
    assert int(version) == PROTOCOL_VERSION
    assert "protocol_version: PROTOCOL_VERSION" in source, "the Hello uses the constant"
    negotiated = {f.name for f in SERVER_FEATURES if f.negotiated}
    for script in NODE_WORKER_LIB.glob("*.js"):
        for listed in re.findall(r"\bfeatures:\s*\[([^\]]*)\]", script.read_text()):
            names = set(re.findall(r"['\"]([^'\"]+)['\"]", listed))
            assert names <= negotiated, f"{script.name} lists unknown features {names - negotiated}"
