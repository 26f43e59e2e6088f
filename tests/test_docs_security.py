"""docs/security.md prints the role table of the code (REQUIRED_ROLES, HTTP_ROUTES)."""

from __future__ import annotations

from pathlib import Path

from headwater_runtime.server import HTTP_ROUTES, REQUIRED_ROLES, describe

DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"


def _rows(section: str) -> list[str]:
    text = DOC.read_text().split(section, 1)[1]
    table = text.split("| --- | --- |\n", 1)[1].split("\n\n", 1)[0]
    return table.splitlines()


def test_the_rpc_table_is_the_codes() -> None:
    expected = [
        f"| `{m.lstrip('/').removeprefix('headwater.v1.')}` | {describe(r)} |"
        for m, r in REQUIRED_ROLES.items()
    ]
    assert _rows("| RPC | roles that may call it |") == expected


def test_the_http_table_is_the_codes() -> None:
    expected = [
        f"| `{r.method} {r.pattern}` | {describe(r.roles)} |" for r in HTTP_ROUTES if not r.of_get
    ]
    assert _rows("| route | roles that may call it |") == expected
