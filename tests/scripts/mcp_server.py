"""An MCP server (the official `mcp` SDK's MCPServer, formerly FastMCP) over streamable HTTP
with TLS, whose tool `read_config` reports progress with the messages PARTS, one
notification each (SSE messages on the call's stream), then returns RESULT. Prints
`LISTENING PORT` once it accepts connections.

usage: mcp_server.py IP CERT KEY PARTS_JSON RESULT
"""
import asyncio
import json
import socket
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

ip, cert, key, parts, result = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
server = MCPServer("config-server")


@server.tool()
async def read_config(name: str, ctx: Context) -> str:
    """The named deployment config."""
    for i, part in enumerate(parts):
        await ctx.report_progress(i + 1, len(parts), part)
        await asyncio.sleep(0.005)
    return result


sock = socket.socket()
sock.bind((ip, 0))
sock.listen()
config = uvicorn.Config(
    server.streamable_http_app(host=ip), log_level="warning", ssl_certfile=cert, ssl_keyfile=key
)
print(f"LISTENING {sock.getsockname()[1]}", flush=True)
asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
