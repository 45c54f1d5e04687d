"""Chat completions through the gateway with the official `openai` client.

Usage: openai_calls.py ADDR HOST CALLS

ADDR is the gateway's host:port, HOST the Host header that selects the VirtualService,
CALLS how many calls to make of each kind (plain or streaming, with or without the
experiment header). Prints one JSON object per call on stdout:

  {"stream": bool, "experiment": bool, "model": str, "content": str,
   "completion_tokens": int | null, "chunks": int, "x_model_version": str | null}

Any exception ends the run with a traceback and a non-zero exit status: the Rust test
(crates/abgate/tests/openai_client.rs) counts the lines and fails on a missing one.
The client does not retry (max_retries=0), so that every failure shows.
"""

import json
import sys

from openai import OpenAI

EXPERIMENT = {"x-experiment-id": "exp-1"}
MESSAGES = [{"role": "user", "content": "Say something about A/B tests."}]


def plain(client, headers):
    raw = client.chat.completions.with_raw_response.create(
        model="llama",
        messages=MESSAGES,
        extra_headers=headers,
    )
    completion = raw.parse()
    usage = completion.usage
    return {
        "model": completion.model,
        "content": completion.choices[0].message.content or "",
        "completion_tokens": usage.completion_tokens if usage else None,
        "chunks": 0,
        "x_model_version": raw.headers.get("x-model-version"),
    }


def streamed(client, headers):
    raw = client.chat.completions.with_raw_response.create(
        model="llama",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    )
    stream = raw.parse()
    models = set()
    content = []
    completion_tokens = None
    chunks = 0
    with stream:
        for chunk in stream:
            chunks += 1
            models.add(chunk.model)
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    content.append(choice.delta.content)
            if chunk.usage is not None:
                completion_tokens = chunk.usage.completion_tokens
    if len(models) != 1:
        raise RuntimeError(f"a stream's chunks name {sorted(models)}, not one model")
    return {
        "model": models.pop(),
        "content": "".join(content),
        "completion_tokens": completion_tokens,
        "chunks": chunks,
        "x_model_version": raw.headers.get("x-model-version"),
    }


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    addr, host, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = OpenAI(
        base_url=f"http://{addr}/v1",
        api_key="test",
        default_headers={"Host": host},
        max_retries=0,
        timeout=30.0,
    )
    with client:
        for stream in (False, True):
            for experiment in (False, True):
                call = streamed if stream else plain
                headers = EXPERIMENT if experiment else {}
                for _ in range(calls):
                    result = call(client, headers)
                    result.update(stream=stream, experiment=experiment)
                    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
