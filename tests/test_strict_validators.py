"""Every published schema passes ajv in full strict mode (what the TypeScript SDK and many hosts validate with), where
node and ajv are installed ($TIERED_MCP_TEST_NPM_PREFIX/lib/node_modules/ajv; .ci/run installs it with the hosts)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mcp import Client

from tiered_mcp.serve.server import build_server

CHECK = """
const Ajv2020 = require(process.argv[1] + "/ajv/dist/2020").default;
const tools = JSON.parse(require("fs").readFileSync(0, "utf8"));
const bad = [];
for (const t of tools) for (const key of ["inputSchema", "outputSchema"]) {
  if (!t[key]) continue;
  try { new Ajv2020({ strict: true, allErrors: true }).compile(t[key]); } catch (e) { bad.push(`${t.name}.${key}: ${e.message}`); }
}
console.log(JSON.stringify(bad));
"""


def ajv_modules() -> Path:
    prefix = os.environ.get("TIERED_MCP_TEST_NPM_PREFIX")
    modules = Path(prefix) / "lib" / "node_modules" if prefix else None
    if shutil.which("node") is None or modules is None or not (modules / "ajv").is_dir():
        pytest.skip("node with ajv is not installed (npm i -g --prefix DIR ajv@8 and set TIERED_MCP_TEST_NPM_PREFIX=DIR;"
                    " .ci/run does this when npm can reach its registry)")
    return modules


@pytest.mark.anyio
async def test_ajv_strict_accepts_every_published_schema(make_runner):
    modules = ajv_modules()
    async with Client(build_server(make_runner())) as client:
        tools = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in (await client.list_tools()).tools]
    out = subprocess.run(["node", "-e", CHECK, str(modules)], input=json.dumps(tools), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
