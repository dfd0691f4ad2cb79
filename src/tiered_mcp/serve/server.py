"""The MCP server: tools from specs, run by the Runner; resources for the tier table and usage totals.

Failures while running a tool become `is_error` results a model can act on; only protocol misuse (an unknown tool)
is a protocol error. Nothing here writes to stdout: on stdio that belongs to the protocol.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from tiered_mcp import __version__
from tiered_mcp.call.budget import utc_now
from tiered_mcp.call.options import parse_options
from tiered_mcp.call.provider_batch import default_executor
from tiered_mcp.call.routing import Usable, ladder_for
from tiered_mcp.call.runner import Runner, UnknownTool
from tiered_mcp.core.config import LOCAL, TIERS, Config, Tier, load_config, spec_dirs, unexpanded_variables
from tiered_mcp.core.errors import CallError, ConfigError
from tiered_mcp.core.files import private_file
from tiered_mcp.core.identity import current_caller
from tiered_mcp.core.prices import price_of
from tiered_mcp.evidence.shadow import Shadows
from tiered_mcp.evidence.tiering import AutoTiering
from tiered_mcp.ledger.base import off_loop, open_ledger
from tiered_mcp.ledger.sql import SqlLedger
from tiered_mcp.ledger.sqlite import Ledger
from tiered_mcp.ledger.tasks import TaskStore
from tiered_mcp.models.base import LazyOpenAI, Model
from tiered_mcp.models.local import LocalEngine
from tiered_mcp.models.local_examples import SQLiteExampleStore
from tiered_mcp.serve import results
from tiered_mcp.serve.tasks import Executor, TaskManager, TasksExtension, apply_extensions, path_executor
from tiered_mcp.specs.spec import Specs, ToolSpec, load_specs

log = logging.getLogger("tiered_mcp")

TIERS_URI = "tiered://tiers"
USAGE_URI = "tiered://usage"
CALL_URI_TEMPLATE = "tiered://calls/{call_id}"
"""One call from the ledger with its attempts: the id is a receipt's `call_id`."""
RESOURCE_NOT_FOUND = types.INVALID_PARAMS
"""An unknown resource is invalid params with `data.uri` (the 2026-07-28 spec retired -32002)."""


_dumps = results.dumps


def _noise(key: str, value: Any) -> bool:
    return (key == "additionalProperties" and value is False) or (key == "minLength" and value == 1 and value is not True)


def compact(schema: Any) -> Any:
    """A schema as published to hosts: without keywords that only restrict (closed objects, non-empty strings).

    Hosts pay for every token of tools/list on every turn; the server still validates against the full schema,
    and a call that breaks it gets an error that names the field.
    """
    if isinstance(schema, list):
        return [compact(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: compact(v) for k, v in schema.items() if not _noise(k, v)}


def published_input_schema(spec: ToolSpec, config: Config) -> dict[str, Any]:
    """The spec's input schema plus the optional per-call `tier`, limited to what the config allows."""
    allowed = [t for t in TIERS[: TIERS.index(config.call_tier_ceiling) + 1]
               if t in config.tiers and (t != LOCAL or spec.local_task)]
    schema = dict(spec.input_schema)
    props = dict(spec.input_schema.get("properties", {}))
    if spec.batch is not None:
        name = spec.batch.argument
        item = {k: v for k, v in props[name].items() if k != "description"}
        props["items"] = {"type": "array", "items": item, "maxItems": spec.batch.max_items,
                          "description": f"Batch of {name} values instead of {name}"}
        schema["required"] = [r for r in spec.input_schema.get("required", []) if r != name]
        # Each branch names its property with its type: ajv in full strict mode (strictRequired) wants required
        # properties defined in the same branch, and Inspector's --strict warns on an empty schema.
        kind = item.get("type", "string")
        schema["anyOf"] = [{"required": [name], "properties": {name: {"type": kind}}},
                           {"required": ["items"], "properties": {"items": {"type": "array"}}}]
    props["tier"] = {"type": "string", "enum": allowed}
    schema["properties"] = props
    return compact(schema)


def published_output_schema(spec: ToolSpec) -> dict[str, Any]:
    """The spec's output schema; for a batch tool, either that or {results: [{index, output | error}], failed}."""
    if spec.batch is None:
        return compact(spec.output_schema)
    one = {"$ref": "#/$defs/one"}
    batch = {"type": "object", "required": ["results"], "properties": {
        "results": {"type": "array", "items": {"type": "object", "required": ["index"], "properties": {
            "index": {"type": "integer"}, "output": one, "error": {"type": "string"}}}},
        "failed": {"type": "integer"}}}
    return {"type": "object", "$defs": {"one": compact(spec.output_schema)}, "anyOf": [one, batch]}


def tier_table(config: Config, specs: Specs, usable: Usable = lambda tier: True,
               auto: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per tool: the tier it starts on, its escalation ladder, model and price (USD per million tokens).

    With `usable`, the ladder is the one a call would use now (e.g. local when no key is set); a tool that cannot
    run at all shows an empty ladder and the reason. `auto` (evidence/tiering.py `summary`) gives auto tools their
    current tier, and each such row an `auto` object: bar, evidence per tier, the last switch.
    """
    rows = []
    by_tool = {a["tool"]: a for a in auto or ()}
    for spec in specs:
        state = by_tool.get(spec.name)
        try:
            ladder, problem = ladder_for(config, spec, usable=usable,
                                         auto_tier=state["tier"] if state else None), None
        except CallError as e:
            ladder, problem = [], str(e)
        tier = config.tiers.get(ladder[0]) if ladder else None
        price = price_of(tier) if tier else None
        rows.append({
            "tool": spec.name,
            "tier": ladder[0] if ladder else None,
            "ladder": ladder,
            "model": tier.model if tier else None,
            "input_price": price.input if price else None,
            "output_price": price.output if price else None,
            "price_source": price.source if price else "unknown",
            **({"service_tier": service} if (service := _service_tier(config, spec.name, tier)) else {}),
            "description": spec.description,
            **({"problem": problem} if problem else {}),
            **({"auto": {**{k: v for k, v in state.items() if k not in ("tool", "switches")},
                         "last_switch": state["switches"][0] if state["switches"] else None}} if state else {}),
        })
    return rows


def _service_tier(config: Config, tool: str, tier: Tier | None) -> str | None:
    """The provider service tier the tool's requests ask for on its first tier (prices above are standard)."""
    settings = config.tools.get(tool)
    return (settings.service_tier if settings else None) or (tier.service_tier if tier else None)


def build_server(runner: Runner, task_executor: Executor | None = None) -> Server[Any]:
    """An MCP server publishing the runner's tools and resources, and with a ledger, the Tasks extension for batch
    calls (`task_executor` runs their items; default: the model path)."""
    tools = [
        types.Tool(
            name=spec.name,
            title=spec.title,
            description=spec.description,
            input_schema=published_input_schema(spec, runner.config),
            output_schema=published_output_schema(spec),
            annotations=types.ToolAnnotations(
                read_only_hint=spec.annotations.read_only,
                # The spec says destructive_hint means something only for tools that are not read-only.
                destructive_hint=None if spec.annotations.read_only else spec.annotations.destructive,
                idempotent_hint=spec.annotations.idempotent,
                open_world_hint=spec.annotations.open_world,
            ),
        )
        for spec in runner.specs
    ]

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    # The same schemas tools/list publishes (it is not scoped to the caller). Without this lookup the SDK's
    # Streamable HTTP path runs the whole tools/list handler, serialising every tool, on each tools/call to check
    # its Mcp-Param-* headers: a fifth of the server's CPU per call at 64 callers (docs/benchmarks.md).
    input_schemas = {tool.name: tool.input_schema for tool in tools}

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        async def progress(done: float, total: float | None, message: str) -> None:
            await ctx.session.report_progress(done, total, message)

        def log_call(receipt: dict[str, Any] | None, error: str | None = None) -> None:
            # One line per finished call, fields from the receipt; the error is a class name, never its message,
            # which may quote the caller's arguments.
            r = receipt or {}
            attempts = len(r.get("attempts") or ()) if not r.get("batch") else r.get("attempts_total", 0)
            tier = r.get("tier") or ("+".join(r["tiers"]) if r.get("tiers") else None)
            fields = {"tool": params.name, "ok": error is None, "tier": tier, "model": r.get("model"),
                      "attempts": attempts, "cost_usd": r.get("cost_usd"), "latency_ms": r.get("latency_ms"),
                      "call_id": r.get("call_id"), "error": error,
                      **({"items": r.get("items"), "failed": r.get("failed")} if r.get("batch") else {})}
            log.info("call %(tool)s ok=%(ok)s tier=%(tier)s model=%(model)s attempts=%(attempts)s "
                     "cost_usd=%(cost_usd)s latency_ms=%(latency_ms)s call_id=%(call_id)s", fields, extra=fields)

        try:
            result = await runner.call(params.name, params.arguments, progress, parse_options(params.meta))
        except UnknownTool as e:
            raise MCPError(types.INVALID_PARAMS, str(e)) from None
        except CallError as e:
            log_call(e.receipt, type(e).__name__)
            return results.failure(e)
        except Exception as e:  # a bug of ours must not take the server down with it
            log.exception("internal error in tool %s", params.name)
            log_call(None, type(e).__name__)
            return results.internal(e)
        log_call(result.receipt)
        return results.answer(result)

    async def list_resources(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[
            types.Resource(uri=TIERS_URI, name="tiers", title="Tier table", mime_type="application/json",
                           description="Per tool: tier, escalation ladder, model, price per million tokens; "
                                       "auto tools' evidence and last tier switch."),
            types.Resource(uri=USAGE_URI, name="usage", title="Usage totals", mime_type="application/json",
                           description="Calls, tokens, cost, flagship baseline and savings per tool, from the ledger."),
        ])

    async def list_resource_templates(ctx: Any, params: types.PaginatedRequestParams | None
                                      ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[
            types.ResourceTemplate(uri_template=CALL_URI_TEMPLATE, name="call", title="One call's receipt",
                                   mime_type="application/json",
                                   description="A call from the ledger by its receipt's call_id: tier, model, cost, "
                                               "saving and every attempt."),
        ])

    def not_found(uri: str, why: str) -> MCPError:
        return MCPError(RESOURCE_NOT_FOUND, why, {"uri": uri})

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        prefix = CALL_URI_TEMPLATE.split("{")[0]
        if uri.startswith(prefix):
            raw = uri[len(prefix):]
            if not raw or len(raw) > 64 or not raw.replace("-", "").isalnum():
                raise not_found(uri, f"resource {uri[:100]!r}: not a call id ({CALL_URI_TEMPLATE})")
            if runner.ledger is None:
                raise not_found(uri, "no ledger configured")
            await runner.writer.flush(timeout_s=2.0)  # a call just answered may still be queued
            detail = await off_loop(runner.ledger.call_detail, raw)
            caller = current_caller.get()
            if detail is not None and caller is not None and not runner.config.share_across_callers \
                    and detail.get("caller") != caller.name:
                detail = None  # another caller's call: as if it did not exist
            if detail is None:
                raise not_found(uri, f"resource {uri!r}: no call {raw} in the ledger")
            return types.ReadResourceResult(contents=[
                types.TextResourceContents(uri=uri, mime_type="application/json", text=_dumps(detail))])
        if uri == TIERS_URI:
            auto = await runner.steering.describe() if isinstance(runner.steering, AutoTiering) else None
            body: Any = tier_table(runner.config, runner.specs, runner.usable, auto)
        elif uri == USAGE_URI:
            if runner.ledger is None:
                body = {"error": "no ledger configured"}
            else:
                caller = current_caller.get()
                await runner.writer.flush(timeout_s=2.0)  # include the calls answered so far, still queued
                scope = caller.name if caller and not runner.config.share_across_callers else None
                usage = await off_loop(runner.ledger.usage, None, "tool", scope)
                body = usage.as_dict()
        else:
            raise not_found(uri, f"unknown resource {uri!r}; known: {TIERS_URI}, {USAGE_URI}, {CALL_URI_TEMPLATE}")
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=_dumps(body))]
        )

    # No prompts are offered; answering the list (empty) rather than "method not found" keeps clients that list
    # every primitive, and the conformance suite's caching scenario, from treating the server as broken.
    async def list_prompts(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=[])

    async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        raise MCPError(types.INVALID_PARAMS, f"unknown prompt {params.name!r}: tiered-mcp offers tools, not prompts")

    manager = None
    if isinstance(runner.ledger, SqlLedger):
        manager = TaskManager(runner, TaskStore(runner.ledger),
                              task_executor or default_executor(runner) or path_executor)

    @asynccontextmanager
    async def lifespan(server: Any) -> AsyncIterator[Runner]:
        async with runner.running():
            if manager is None:
                yield runner
            else:
                async with manager.running():
                    yield runner

    server = Server(
        "tiered-mcp",
        version=__version__,
        lifespan=lifespan,
        get_tool_input_schema=input_schemas.get,
        instructions="Tools that run routine steps on cheaper models; each result's _meta carries a cost receipt.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
    )
    if manager is not None:
        apply_extensions(server, [TasksExtension(manager)], call_tool)
    return server


def check_tool_settings(config: Config, specs: Specs) -> None:
    """[tools.X] tables must name loaded tools, and may start on local only tools the local tier serves.

    Raises:
        ConfigError: naming the table and the fix.
    """
    for name, settings in config.tools.items():
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(f"config {config.source}: [tools.{name}] names no loaded tool "
                              f"(tools: {', '.join(sorted(specs.tools))})")
        if settings.tier == "local" and spec.local_task is None:
            raise ConfigError(f"config {config.source}: [tools.{name}] tier = \"local\", but the local tier does not "
                              f"serve {name} (it serves tools with a local_task: classify, rank, summarize)")


def warn_unexpanded(config: Config, env: Mapping[str, str]) -> list[str]:
    """Log a warning for each variable a host passed through as literal `${NAME}` text (it counts as unset)."""
    names = unexpanded_variables(config, env)
    for name in names:
        log.warning("%s is the literal text %r: the host did not expand it, so it counts as unset "
                    "(export %s before starting the host, or put the value in the host's entry)", name, env[name], name)
    return names


def load_checked_specs(config: Config, cli_dirs: tuple[str, ...] = (), env: Mapping[str, str] | None = None) -> Specs:
    """The specs `serve` loads (the config's `specs`, TIERED_MCP_SPECS, then --specs), checked against the config's
    [tools.X] tables exactly as at start-up.

    Raises:
        SetupError: a bad spec file, or a [tools.X] table the specs contradict.
    """
    specs = load_specs(spec_dirs(config, cli_dirs, env))
    check_tool_settings(config, specs)
    return specs


def usable_tiers(config: Config, env: Mapping[str, str], local_installed: bool | None = None) -> Usable:
    """`usable(tier)` exactly as the server's runner decides it (key set and expanded; local tier installed)."""
    from tiered_mcp.models.local import LocalEngine

    installed = LocalEngine.installed() if local_installed is None else local_installed

    def usable(tier: str) -> bool:
        settings = config.tiers.get(tier)
        if settings is None:
            return False
        provider = config.providers[settings.provider]
        return installed if provider.kind == "embedded" else provider.has_key(env)

    return usable


def build_runner(
    config_path: str | None = None,
    spec_dirs: tuple[str, ...] = (),
    ledger_path: str | None = None,
    env: Mapping[str, str] | None = None,
    model: Model | None = None,
) -> Runner:
    """Everything a server needs, from the command line's options (`ledger_path`: a file or a postgresql:// URL).

    Raises:
        SetupError: a bad config or spec file (the message names the file and field), or a ledger that cannot be
            opened.
    """
    env = os.environ if env is None else env
    config = load_config(config_path, env)
    warn_unexpanded(config, env)
    specs = load_checked_specs(config, spec_dirs, env)
    target = ledger_path or config.ledger_target(env)
    try:
        ledger = open_ledger(target, store_inputs=config.store_inputs)
    except (OSError, sqlite3.Error) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise ConfigError(f"cannot open the ledger {target}: {why} (set --ledger or `ledger` in the "
                          "config to a writable file)") from None
    # The runner tells which tiers can run from the same environment the model takes its keys from.
    local = None
    if isinstance(ledger, Ledger):
        # What the local tier learns from higher tiers' answers lives beside a SQLite ledger, as private as it is.
        examples = private_file(ledger.path.with_name(ledger.path.stem + ".examples.sqlite3"))
        local = LocalEngine(store=SQLiteExampleStore(examples), store_inputs=config.store_inputs)
    tiering = AutoTiering.for_config(config, specs, ledger, utc_now)
    return Runner(config, specs, model if model is not None else LazyOpenAI(env), ledger, env=env,
                  observers=(Shadows(), *((tiering,) if tiering else ())), local=local, steering=tiering)


async def serve_stdio(server: Server[Any]) -> None:
    """Serve over this process's stdin and stdout until the client goes away; a line that cannot be parsed is
    answered with a JSON-RPC error, never dropped (see serve/stdio.py)."""
    from tiered_mcp.serve.stdio import serve_stdio as serve

    await serve(server)
