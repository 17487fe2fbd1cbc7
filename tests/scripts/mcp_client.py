"""An MCP client (the official `mcp` SDK over streamable HTTP) that calls `read_config` with a
progress callback; prints one JSON line: the progress messages joined, the result's text and
structured content, and whether the result is an error.

usage: mcp_client.py URL
"""
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main(url):
    progress = []

    async def on_progress(done, total, message):
        progress.append(message)

    async with streamable_http_client(url) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            r = await session.call_tool("read_config", {"name": "prod"}, progress_callback=on_progress)
    print(
        json.dumps(
            {
                "progress": "".join(progress),
                "result": r.content[0].text,
                "structured": r.structured_content,
                "error": r.is_error,
            }
        )
    )


asyncio.run(main(sys.argv[1]))
