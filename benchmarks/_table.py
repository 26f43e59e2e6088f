"""Turning measurements into table rows and printing them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from ._workloads import Workload

COLUMNS = (
    "workload",
    "size",
    "tasks",
    "headwater s",
    "compile s",
    "plain s",
    "dask s",
    "dask-raw s",
    "distributed s",
    "overhead µs/task",
    "peak MB",
    "target",
    "met?",
)
HEADER_START = "workload"
#: The server workloads' table (printed under the embedded one).
SERVER_COLUMNS = (
    "workload",
    "size",
    "tasks",
    "setup s",
    "server s",
    "tasks/s",
    "embedded s",
    "dask-raw s",
    "latency median ms",
    "p95 ms",
    "target",
    "met?",
)
#: The Dask cluster workloads' table.
CLUSTER_COLUMNS = (
    "workload",
    "size",
    "tasks",
    "headwater s",
    "client.submit s",
    "ratio",
    "array MB",
    "peak MB",
    "target",
    "met?",
)


@dataclass
class Outcome:
    """What one child process reported, or why it reported nothing."""

    system: str
    data: dict[str, Any] | None = None
    error: str | None = None

    @property
    def wall(self) -> float | None:
        return statistics.median(self.data["walls"]) if self.data and self.data["walls"] else None

    @property
    def compile(self) -> float | None:
        if not self.data or not self.data["compiles"]:
            return None
        return statistics.median(self.data["compiles"])


@dataclass
class Row:
    workload: Workload
    outcomes: dict[str, Outcome]
    quick: bool

    def get(self, system: str) -> Outcome | None:
        return self.outcomes.get(system)

    @property
    def tasks(self) -> int | None:
        for system in ("headwater", "server", "dask-cluster"):
            outcome = self.get(system)
            if outcome and outcome.data:
                return int(outcome.data["tasks"])
        return None

    @property
    def tasks_per_s(self) -> float | None:
        """Server workloads: task runs per second of the server run's wall time."""
        server = self.get("server")
        wall = server.wall if server else None
        return self.tasks / wall if wall and self.tasks else None

    def latency_ms(self, stat: str) -> float | None:
        """Server workloads: a statistic of ready -> task start, in ms."""
        server = self.get("server")
        if not (server and server.data and "stats_ms" in server.data):
            return None
        return float(server.data["stats_ms"]["ready_to_start"][stat])

    @property
    def cluster_ratio(self) -> float | None:
        """Dask cluster workloads: Headwater wall / raw ``client.submit`` wall."""
        outcome = self.get("dask-cluster")
        if not (outcome and outcome.data and outcome.data.get("raw_walls") and outcome.wall):
            return None
        return outcome.wall / statistics.median(outcome.data["raw_walls"])

    @property
    def cluster_peak_fraction(self) -> float | None:
        outcome = self.get("dask-cluster")
        if not (outcome and outcome.data and outcome.data.get("array_mb")):
            return None
        return float(outcome.data["peak_mb"]) / float(outcome.data["array_mb"])

    @property
    def overhead_us(self) -> float | None:
        hw, plain = self.get("headwater"), self.get("plain")
        if not (hw and plain and hw.wall is not None and plain.wall is not None and self.tasks):
            return None
        return (hw.wall - plain.wall) / self.tasks * 1e6

    @property
    def peak_mb(self) -> float | None:
        hw = self.get("headwater")
        return hw.data["peak_mb"] if hw and hw.data else None

    @property
    def dask_capped(self) -> bool:
        return self.workload.params_for("dask", self.quick) != self.workload.params(self.quick)

    def capped(self, system: str) -> bool:
        """Whether ``system`` ran this workload at a smaller size (see the notes)."""
        return self.workload.params_for(system, self.quick) != self.workload.params(self.quick)

    def target(self) -> str:
        parts = []
        if self.workload.max_overhead_us is not None:
            parts.append(f"<= {self.workload.max_overhead_us:g} µs/task")
        if self.workload.max_peak_mb is not None:
            parts.append(f"< {self.workload.max_peak_mb:g} MB")
        if self.workload.max_wall_s is not None:
            parts.append(f"< {self.workload.max_wall_s:g} s")
        if self.workload.min_tasks_per_s is not None:
            parts.append(f">= {self.workload.min_tasks_per_s:,g} tasks/s")
        if self.workload.max_ratio is not None:
            parts.append(f"<= {self.workload.max_ratio:g}x client.submit")
        if self.workload.max_peak_fraction is not None:
            parts.append(f"peak < {self.workload.max_peak_fraction:.0%} of the array")
        if self.workload.max_latency_ms is not None:
            parts.append(f"median < {self.workload.max_latency_ms:g} ms")
        if self.workload.max_failover_s is not None:
            parts.append(f"median <= {self.workload.max_failover_s:g} s")
        return ", ".join(parts)

    def met(self) -> bool | None:
        checks: list[bool] = []
        if self.workload.max_overhead_us is not None:
            if self.overhead_us is None:
                return None
            checks.append(self.overhead_us <= self.workload.max_overhead_us)
        if self.workload.max_peak_mb is not None:
            if self.peak_mb is None:
                return None
            checks.append(self.peak_mb < self.workload.max_peak_mb)
        if self.workload.max_wall_s is not None and not self.quick:
            hw = self.get("headwater")
            if hw is None or hw.wall is None:
                return None
            checks.append(hw.wall < self.workload.max_wall_s)
        if self.workload.min_tasks_per_s is not None:
            rate = self.tasks_per_s
            if rate is None:
                return None
            checks.append(rate >= self.workload.min_tasks_per_s)
        if self.workload.max_latency_ms is not None:
            median = self.latency_ms("median")
            if median is None:
                return None
            checks.append(median < self.workload.max_latency_ms)
        if self.workload.max_failover_s is not None:
            server = self.get("server")
            if server is None or server.wall is None:
                return None
            checks.append(server.wall <= self.workload.max_failover_s)
        for target, value in (
            (self.workload.max_ratio, self.cluster_ratio),
            (self.workload.max_peak_fraction, self.cluster_peak_fraction),
        ):
            if target is not None:
                if value is None:
                    return None
                checks.append(value <= target)
        return all(checks)

    def cluster_cells(self) -> list[str]:
        outcome = self.get("dask-cluster")
        data = outcome.data if outcome and outcome.data else {}
        met = self.met()
        raw = data.get("raw_walls")
        return [
            self.workload.name,
            data.get("label", "?"),
            f"{self.tasks:,}" if self.tasks else ("-" if self.tasks == 0 else "?"),
            _seconds(outcome),
            _num(statistics.median(raw) if raw else None, 3),
            _num(self.cluster_ratio, 2),
            _num(data.get("array_mb"), 0),
            _num(data.get("peak_mb"), 1),
            self.target(),
            "?" if met is None else ("yes" if met else "NO"),
        ]

    def cells(self) -> list[str]:
        hw = self.get("headwater")
        label = hw.data["label"] if hw and hw.data else "?"
        met = self.met()
        return [
            self.workload.name,
            label,
            f"{self.tasks:,}" if self.tasks else ("-" if self.tasks == 0 else "?"),
            _seconds(hw),
            _num(hw.compile if hw else None, 4 if hw and (hw.compile or 1) < 0.1 else 3),
            _seconds(self.get("plain")),
            _seconds(self.get("dask")) + ("*" if self.dask_capped and self.get("dask") else ""),
            _seconds(self.get("dask-raw")),
            _seconds(self.get("distributed"))
            + ("*" if self.capped("distributed") and self.get("distributed") else ""),
            _num(self.overhead_us, 1),
            _num(self.peak_mb, 0),
            self.target(),
            "?" if met is None else ("yes" if met else "NO"),
        ]

    def server_cells(self) -> list[str]:
        server = self.get("server")
        data = server.data if server and server.data else {}
        met = self.met()
        wall = "-"
        if server is not None and (server.error is not None or data.get("walls")):
            wall = _seconds(server)
        return [
            self.workload.name,
            data.get("label", "?"),
            f"{self.tasks:,}" if self.tasks else ("-" if self.tasks == 0 else "?"),
            _num(data.get("setup_s"), 3),
            wall,
            _num(self.tasks_per_s, 0),
            _seconds(self.get("headwater")),
            _seconds(self.get("dask-raw")),
            _num(self.latency_ms("median"), 2),
            _num(self.latency_ms("p95"), 2),
            self.target(),
            "?" if met is None else ("yes" if met else "NO"),
        ]


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _seconds(outcome: Outcome | None) -> str:
    if outcome is None:
        return "-"
    if outcome.error is not None:
        return outcome.error.split(":", 1)[0]  # "timeout" / "error"
    wall = outcome.wall
    assert wall is not None
    return f"{wall:.4f}" if wall < 0.1 else f"{wall:.3f}"


def format_table(rows: list[Row]) -> str:
    """A plain-text table (also valid as a Markdown table body): the embedded
    workloads' columns, or the server (cluster) workloads' for server (cluster) rows."""
    server = bool(rows) and all(row.workload.server for row in rows)
    cluster = bool(rows) and all(row.workload.cluster for row in rows)
    if cluster:
        columns, numeric = CLUSTER_COLUMNS, set(range(2, 8))
        body = [list(columns), *(row.cluster_cells() for row in rows)]
    else:
        columns = SERVER_COLUMNS if server else COLUMNS
        body = [list(columns), *(row.server_cells() if server else row.cells() for row in rows)]
        numeric = set(range(2, 10 if server else 11))
    widths = [max(len(r[i]) for r in body) for i in range(len(columns))]

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)
    )
    return "\n".join([line(body[0]), rule + "|", *(line(r) for r in body[1:])])
