"""An MCP server (the official `mcp` SDK's MCPServer, formerly FastMCP) over streamable HTTP
with TLS. Its tool `read_config` reports progress with the messages PARTS, one notification
each (SSE messages on the call's stream), then returns RESULT; `delete_repo` and
`run_shell` answer with what they were asked. Every call is appended to CALLS_LOG as a JSON
line {"tool", "arguments"}, as the server received it. Prints `LISTENING PORT` once it
accepts connections.

usage: mcp_server.py IP CERT KEY PARTS_JSON RESULT CALLS_LOG
"""
import asyncio
import json
import socket
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

ip, cert, key, parts, result, calls_log = (
    sys.argv[1],
    sys.argv[2],
    sys.argv[3],
    json.loads(sys.argv[4]),
    sys.argv[5],
    sys.argv[6],
)
server = MCPServer("config-server")


def called(tool, **arguments):
    with open(calls_log, "a") as log:
        log.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")


@server.tool()
async def read_config(name: str, ctx: Context) -> str:
    """The named deployment config."""
    called("read_config", name=name)
    for i, part in enumerate(parts):
        await ctx.report_progress(i + 1, len(parts), part)
        await asyncio.sleep(0.005)
    return result


@server.tool()
async def delete_repo(repo: str) -> str:
    """Deletes a repository."""
    called("delete_repo", repo=repo)
    return f"deleted {repo}"


@server.tool()
async def run_shell(command: str, token: str = "") -> str:
    """Runs a shell command."""
    called("run_shell", command=command, token=token)
    return f"ran {command}"


sock = socket.socket()
sock.bind((ip, 0))
sock.listen()
config = uvicorn.Config(
    server.streamable_http_app(host=ip), log_level="warning", ssl_certfile=cert, ssl_keyfile=key
)
print(f"LISTENING {sock.getsockname()[1]}", flush=True)
asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
