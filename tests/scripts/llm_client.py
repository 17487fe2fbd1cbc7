"""What an agent does with an LLM API: one call per base URL, with the official SDK (openai,
anthropic) or the way agents read the APIs that have none in use here (httpx for Gemini's
SSE, requests for Ollama's NDJSON). Prints, per URL, one JSON line: the answer's text and
tool-call arguments as the client assembled them, and what else the client reports.

usage: llm_client.py API,MODE,URL...
API: openai-chat | openai-responses | anthropic | gemini | ollama-chat | ollama-generate
MODE: stream | whole (one JSON body; openai-chat and anthropic)
"""
import json
import sys

MESSAGES = [{"role": "user", "content": "Show me the deployment config."}]
TOOL = "save_config"
OPENAI_TOOLS = [{"type": "function", "function": {"name": TOOL, "parameters": {"type": "object"}}}]


def openai_chat(url, stream):
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0)
    if not stream:
        r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=OPENAI_TOOLS)
        m = r.choices[0].message
        return {"text": m.content, "args": m.tool_calls[0].function.arguments}
    text, args = "", ""
    for chunk in client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, tools=OPENAI_TOOLS, stream=True
    ):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for call in delta.tool_calls or []:
            args += call.function.arguments or ""
    return {"text": text, "args": args}


def openai_responses(url, stream):
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0)
    text, args, extra = "", "", {}
    tools = [{"type": "function", "name": TOOL, "parameters": {"type": "object"}}]
    for event in client.responses.create(model="gpt-4.1", input="Show me the config.", tools=tools, stream=True):
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.function_call_arguments.delta":
            args += event.delta
        elif event.type == "response.output_text.done":
            extra["done_text"] = event.text
        elif event.type == "response.function_call_arguments.done":
            extra["done_args"] = event.arguments
        elif event.type == "response.completed":
            extra["completed_text"] = event.response.output_text
    return {"text": text, "args": args, "extra": extra}


def anthropic_messages(url, stream):
    import anthropic

    client = anthropic.Anthropic(base_url=url, api_key="test-key", max_retries=0)
    tools = [{"name": TOOL, "input_schema": {"type": "object"}}]
    call = dict(model="claude-sonnet-4-5", max_tokens=1024, messages=MESSAGES, tools=tools)
    if not stream:
        m = client.messages.create(**call)
        return {"text": m.content[0].text, "args": json.dumps(m.content[1].input)}
    text, args = "", ""
    with client.messages.stream(**call) as s:
        for event in s:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
            elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                args += event.delta.partial_json
        final = s.get_final_message()
    extra = {"final_text": final.content[0].text}
    if len(final.content) > 1:
        extra["final_input"] = final.content[1].input
    return {"text": text, "args": args, "extra": extra}


def gemini(url, stream):
    import httpx

    text = ""
    body = {"contents": [{"role": "user", "parts": [{"text": "Show me the config."}]}]}
    endpoint = url + "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", endpoint, json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[len("data: "):])
                    text += event["candidates"][0]["content"]["parts"][0]["text"]
    return {"text": text}


def ollama(url, path, field):
    import requests

    text = ""
    body = {"model": "llama3.2", "messages": MESSAGES, "prompt": "Show me the config."}
    with requests.post(url + path, json=body, stream=True, timeout=30) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line:
                event = json.loads(line)
                text += field(event)
    return {"text": text}


APIS = {
    "openai-chat": openai_chat,
    "openai-responses": openai_responses,
    "anthropic": anthropic_messages,
    "gemini": gemini,
    "ollama-chat": lambda url, _: ollama(url, "/api/chat", lambda e: e["message"]["content"]),
    "ollama-generate": lambda url, _: ollama(url, "/api/generate", lambda e: e["response"]),
}

for call in sys.argv[1:]:
    api, mode, url = call.split(",", 2)
    print(json.dumps(APIS[api](url, mode == "stream")), flush=True)
