"""ControlPlaneService RPCs that read results and logs (a part of ControlServicer).

Kept apart from ``_control.py`` so that the RPCs about seeing runs (results of any
size, paged and followed logs) live next to ``_reads.py``, which the HTTP API shares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from headwater.v1 import control_plane_pb2 as cp

from ._details import detail
from ._reads import LOG_PAGE_MAX, RunReads, log_pages

if TYPE_CHECKING:
    from ._core import ServerCore


def _page_token(token: str) -> int:
    """A log page token as a position (ValueError for anything else)."""
    if not token:
        return 0
    position = int(token)
    if position < 0:
        raise ValueError
    return position


class ReadsServicer:
    """The reading RPCs of ControlPlaneService (mixed into ControlServicer).

    Args:
        core: the server's state.
    """

    core: ServerCore
    reads: RunReads

    async def _bad_token(self, context: Any, token: str) -> None:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, detail(f"page_token {token!r} is not a log position")
        )

    async def GetFlowRunResult(
        self,
        request: cp.GetFlowRunResultRequest,
        context: grpc.aio.ServicerContext[cp.GetFlowRunResultRequest, cp.GetFlowRunResultResponse],
    ) -> cp.GetFlowRunResultResponse:
        """A finished flow run's result, its large parts by reference."""
        from ._control import refusals

        async with refusals(context):
            value = await self.reads.flow_result(request.id)
        return cp.GetFlowRunResultResponse(result=value)

    async def ListTaskRunLogs(
        self,
        request: cp.ListTaskRunLogsRequest,
        context: grpc.aio.ServicerContext[cp.ListTaskRunLogsRequest, cp.ListTaskRunLogsResponse],
    ) -> cp.ListTaskRunLogsResponse:
        """Log records of a run's task runs (of one task run or task node, if named),
        oldest first, a page at a time when ``page_size`` is set."""
        from ._control import refusals

        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be >= 0")
        try:
            after = _page_token(request.page_token)
        except ValueError:
            await self._bad_token(context, request.page_token)
        async with refusals(context):
            row = await self.reads.flow_run(request.flow_run_id)
            try:
                await self.reads.check_task(row, request.task_id, request.task_run_id)
            except ValueError as exc:  # a malformed task run id
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail(str(exc)))
            limit = min(request.page_size or LOG_PAGE_MAX, LOG_PAGE_MAX)
            try:
                rows = await self.reads.logs(
                    row.id,  # (the whole id: a prefix found the run, then no records)
                    task_run=request.task_run_id,
                    task_id=request.task_id,
                    after=after,
                    limit=limit,
                )
            except ValueError as exc:  # a malformed task run id
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail(str(exc)))
        entries, last = next(log_pages(rows), ([], 0))
        response = cp.ListTaskRunLogsResponse(entries=entries)
        if len(entries) < len(rows) or len(rows) == limit:  # (more may follow)
            response.next_page_token = str(last)
        return response

    async def WatchTaskRunLogs(
        self,
        request: cp.WatchTaskRunLogsRequest,
        context: grpc.aio.ServicerContext[cp.WatchTaskRunLogsRequest, cp.WatchTaskRunLogsResponse],
    ) -> AsyncIterator[cp.WatchTaskRunLogsResponse]:
        """A run's log records, then new ones as they are stored, until it has ended."""
        from ._control import refusals

        try:
            after = _page_token(request.page_token)
        except ValueError:
            await self._bad_token(context, request.page_token)
        async with refusals(context):
            row = await self.reads.flow_run(request.flow_run_id)
            await self.reads.check_task(row, request.task_id)
        async for page in self.reads.follow_logs(row.id, task_id=request.task_id, after=after):
            for entries, last in log_pages(page):
                yield cp.WatchTaskRunLogsResponse(entries=entries, next_page_token=str(last))


__all__ = ["ReadsServicer"]
