"""A client side of the Tasks extension (io.modelcontextprotocol/tasks, 2026-07-28) on the SDK's public surface:
a `ClientExtension` whose claim on `resultType: "task"` polls `tasks/get` until the task ends, and raw requests for
`tasks/get`, `tasks/update` and `tasks/cancel` sent through the client's session."""

from __future__ import annotations

from typing import Any, Literal

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from pydantic import ConfigDict

from tiered_mcp.serve.tasks import TASKS_EXTENSION, TaskIdParams, UpdateTaskParams


class CreateTaskResult(types.Result):
    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"]
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None
    poll_interval_ms: int | None = None


class DetailedTask(types.Result):
    model_config = ConfigDict(extra="allow")
    result_type: str = "complete"
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None
    poll_interval_ms: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class GetTask(types.Request[TaskIdParams, Literal["tasks/get"]]):
    name_param = "taskId"  # the spec: Mcp-Name carries the task id on HTTP


class CancelTask(types.Request[TaskIdParams, Literal["tasks/cancel"]]):
    name_param = "taskId"


class UpdateTask(types.Request[UpdateTaskParams, Literal["tasks/update"]]):
    name_param = "taskId"


TERMINAL = ("completed", "failed", "cancelled")


async def get_task(client: Client, task_id: str) -> DetailedTask:
    return await client.session.send_request(GetTask(method="tasks/get", params=TaskIdParams(task_id=task_id)),
                                             DetailedTask)


async def cancel_task(client: Client, task_id: str) -> types.Result:
    return await client.session.send_request(
        CancelTask(method="tasks/cancel", params=TaskIdParams(task_id=task_id)), types.EmptyResult)


async def update_task(client: Client, task_id: str, responses: dict[str, Any]) -> types.Result:
    return await client.session.send_request(
        UpdateTask(method="tasks/update", params=UpdateTaskParams(task_id=task_id, input_responses=responses)),
        types.EmptyResult)


async def wait_task(client: Client, task_id: str, timeout_s: float = 30.0, poll_s: float = 0.02) -> DetailedTask:
    """Poll until the task ends (faster than its pollIntervalMs: tests should not wait seconds)."""
    with anyio.fail_after(timeout_s):
        while True:
            task = await get_task(client, task_id)
            if task.status in TERMINAL:
                return task
            await anyio.sleep(poll_s)


async def start_task(client: Client, tool: str, arguments: dict[str, Any]) -> CreateTaskResult:
    result = await client.session.call_tool(tool, arguments, allow_claimed=True)
    assert isinstance(result, CreateTaskResult), result
    return result


class TasksClient(ClientExtension):
    """Declares the extension; a task handle from `client.call_tool` is polled to its end transparently."""

    identifier = TASKS_EXTENSION

    def __init__(self, poll_s: float = 0.02) -> None:
        self.poll_s = poll_s
        self.handles: list[CreateTaskResult] = []

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreateTaskResult, resolve=self._resolve)]

    async def _resolve(self, handle: CreateTaskResult, ctx: ClaimContext) -> types.CallToolResult:
        self.handles.append(handle)
        with anyio.fail_after(30):
            while True:
                task = await ctx.session.send_request(
                    GetTask(method="tasks/get", params=TaskIdParams(task_id=handle.task_id)), DetailedTask)
                if task.status == "completed":
                    return types.CallToolResult.model_validate(task.result)
                if task.status in TERMINAL:
                    raise RuntimeError(f"task {handle.task_id} ended {task.status}: {task.status_message}")
                await anyio.sleep(self.poll_s)
