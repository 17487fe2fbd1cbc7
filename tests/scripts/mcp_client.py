"""An MCP client (the official `mcp` SDK over streamable HTTP). With URL alone it calls
`read_config` with a progress callback and prints one JSON line: the progress messages
joined, the result's text and structured content, and whether the result is an error. With
TOOL ARGUMENTS_JSON pairs it calls each tool in turn in one session and prints a JSON list:
{"result", "error"} for each call, or {"raised"} with the error the SDK raised.

usage: mcp_client.py URL [TOOL ARGUMENTS_JSON]...
"""
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def read_config(session):
    progress = []

    async def on_progress(done, total, message):
        progress.append(message)

    r = await session.call_tool("read_config", {"name": "prod"}, progress_callback=on_progress)
    return {
        "progress": "".join(progress),
        "result": r.content[0].text,
        "structured": r.structured_content,
        "error": r.is_error,
    }


async def call(session, tool, arguments):
    try:
        r = await session.call_tool(tool, arguments)
    except Exception as e:
        return {"raised": f"{type(e).__name__}: {e}"}
    return {"result": r.content[0].text, "error": r.is_error}


async def main(url, *calls):
    async with streamable_http_client(url) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            if not calls:
                report = await read_config(session)
            else:
                pairs = zip(calls[::2], calls[1::2])
                report = [await call(session, tool, json.loads(args)) for tool, args in pairs]
    print(json.dumps(report))


asyncio.run(main(*sys.argv[1:]))
