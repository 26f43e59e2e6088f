"""OperationsService: retries from failure, limits, workers, webhooks (a thin adapter
over ``ServerCore.ops``; the RPCs are documented in proto/headwater/v1/operations.proto).

Errors map to status codes as in the ControlPlane (``refusals``), plus: a run that
cannot be retried now FAILED_PRECONDITION, an unknown worker NOT_FOUND, a bad limit or
webhook INVALID_ARGUMENT; each with one line saying why.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from headwater.v1 import operations_pb2 as ops
from headwater.v1 import operations_pb2_grpc
from headwater.wire import seconds
from headwater_runtime.store import LimitRow

from ._control import AnyContext, ControlServicer, _fail, refusals
from ._core import ServerCore
from ._ops_core import RetryRefused, UnknownWorker
from ._webhooks import WebhookError

#: The most workers one ListWorkers answer holds (and its default page size).
WORKERS_PAGE = 1000


@contextlib.asynccontextmanager
async def _ops_refusals(context: AnyContext) -> AsyncIterator[None]:
    async with refusals(context):
        try:
            yield
        except RetryRefused as exc:
            await _fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except UnknownWorker as exc:
            await _fail(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except (WebhookError, ValueError) as exc:
            await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))


class OperationsServicer(operations_pb2_grpc.OperationsServiceServicer):
    """OperationsService over a ServerCore.

    Args:
        core: the server's state.
        control: the ControlPlane servicer (flow run messages are built the same way).
    """

    def __init__(self, core: ServerCore, control: ControlServicer) -> None:
        self.core = core
        self.ops = core.ops
        self.control = control

    async def RetryFlowRun(
        self,
        request: ops.RetryFlowRunRequest,
        context: grpc.aio.ServicerContext[ops.RetryFlowRunRequest, ops.RetryFlowRunResponse],
    ) -> ops.RetryFlowRunResponse:
        """Retry an ended run from its failure; stored before the answer."""
        if not request.id:
            await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "id is required")
        async with _ops_refusals(context):
            # By id or unique id prefix, as GetFlowRun and CancelFlowRun take it.
            run_id = (await self.control.reads.flow_run(request.id)).id
            await self.ops.retry(run_id, request.reason)
        row = await self.core.io.read(self.core.store.get_flow_run, run_id)
        return ops.RetryFlowRunResponse(flow_run=await self.control.reads.message(row))

    async def SetConcurrencyLimit(
        self,
        request: ops.SetConcurrencyLimitRequest,
        context: grpc.aio.ServicerContext[
            ops.SetConcurrencyLimitRequest, ops.SetConcurrencyLimitResponse
        ],
    ) -> ops.SetConcurrencyLimitResponse:
        """Create or replace a tag's limit (stored, then applied at once)."""
        limit = request.limit
        row = LimitRow(limit.tag, limit.concurrency, limit.rate, seconds(limit.rate_period))
        async with _ops_refusals(context):
            message = await self.ops.set_limit(row)  # audited there
        return ops.SetConcurrencyLimitResponse(limit=message)

    async def ListConcurrencyLimits(
        self,
        request: ops.ListConcurrencyLimitsRequest,
        context: grpc.aio.ServicerContext[
            ops.ListConcurrencyLimitsRequest, ops.ListConcurrencyLimitsResponse
        ],
    ) -> ops.ListConcurrencyLimitsResponse:
        """Every limit with its current use."""
        return ops.ListConcurrencyLimitsResponse(limits=self.ops.limit_messages())

    async def DeleteConcurrencyLimit(
        self,
        request: ops.DeleteConcurrencyLimitRequest,
        context: grpc.aio.ServicerContext[
            ops.DeleteConcurrencyLimitRequest, ops.DeleteConcurrencyLimitResponse
        ],
    ) -> ops.DeleteConcurrencyLimitResponse:
        """Remove a tag's limit."""
        async with _ops_refusals(context):
            await self.ops.delete_limit(request.tag)  # audited there
        return ops.DeleteConcurrencyLimitResponse()

    async def ListWorkers(
        self,
        request: ops.ListWorkersRequest,
        context: grpc.aio.ServicerContext[ops.ListWorkersRequest, ops.ListWorkersResponse],
    ) -> ops.ListWorkersResponse:
        """The workers, online first, then by name; paged."""
        size = request.page_size or WORKERS_PAGE
        if not 1 <= size <= WORKERS_PAGE:
            await _fail(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be 1..{WORKERS_PAGE}"
            )
        async with _ops_refusals(context):  # (a token it did not give: INVALID_ARGUMENT)
            workers, token = self.ops.workers.page(
                request.page_token, size, online_only=request.online_only
            )
        return ops.ListWorkersResponse(workers=workers, next_page_token=token)

    async def DrainWorker(
        self,
        request: ops.DrainWorkerRequest,
        context: grpc.aio.ServicerContext[ops.DrainWorkerRequest, ops.DrainWorkerResponse],
    ) -> ops.DrainWorkerResponse:
        """Stop assigning attempts to the workers of a name."""
        async with _ops_refusals(context):
            workers = await self.ops.drain(request.name, request.exit_when_idle)
        return ops.DrainWorkerResponse(workers=workers)

    async def ResumeWorker(
        self,
        request: ops.ResumeWorkerRequest,
        context: grpc.aio.ServicerContext[ops.ResumeWorkerRequest, ops.ResumeWorkerResponse],
    ) -> ops.ResumeWorkerResponse:
        """Let drained workers of a name take attempts again."""
        async with _ops_refusals(context):
            workers = await self.ops.resume(request.name)
        return ops.ResumeWorkerResponse(workers=workers)

    async def CreateWebhook(
        self,
        request: ops.CreateWebhookRequest,
        context: grpc.aio.ServicerContext[ops.CreateWebhookRequest, ops.CreateWebhookResponse],
    ) -> ops.CreateWebhookResponse:
        """Register a webhook."""
        hook = request.webhook
        async with _ops_refusals(context):
            row = await self.ops.webhooks.create(
                hook.url,
                tuple(hook.flow_names),
                tuple(int(s) for s in hook.states),
                hook.late,
                hook.secret,
            )
        return ops.CreateWebhookResponse(webhook=self.ops.webhook_message(row))

    async def ListWebhooks(
        self,
        request: ops.ListWebhooksRequest,
        context: grpc.aio.ServicerContext[ops.ListWebhooksRequest, ops.ListWebhooksResponse],
    ) -> ops.ListWebhooksResponse:
        """Every webhook with its delivery counts."""
        counts = await self.core.io.read(self.core.store.delivery_counts)
        hooks = sorted(self.ops.webhooks.hooks.values(), key=lambda w: (w.created_at, w.id))
        return ops.ListWebhooksResponse(
            webhooks=[self.ops.webhook_message(w, counts.get(w.id)) for w in hooks]
        )

    async def DeleteWebhook(
        self,
        request: ops.DeleteWebhookRequest,
        context: grpc.aio.ServicerContext[ops.DeleteWebhookRequest, ops.DeleteWebhookResponse],
    ) -> ops.DeleteWebhookResponse:
        """Remove a webhook."""
        async with _ops_refusals(context):
            await self.ops.webhooks.delete(request.id)
        return ops.DeleteWebhookResponse()
