"""Use a p2pai node with the official OpenAI Python client: chat, streaming, embeddings.

    python examples/openai_client.py [--base-url http://127.0.0.1:8080/v1] [--api-key KEY]
"""

from __future__ import annotations

import argparse

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default="unused", help="the node's --api-key, if it has one")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)

    print("models:", [model.id for model in client.models.list()])

    reply = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Name three colours of the sea."}],
        max_tokens=48,
    )
    print("chat:", reply.choices[0].message.content)
    print("usage:", reply.usage)

    print("stream: ", end="", flush=True)
    stream = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Tell me a short story about a lighthouse."}],
        max_tokens=64,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    embeddings = client.embeddings.create(model=args.model, input=["a lighthouse", "the open sea"])
    print("embeddings:", [len(item.embedding) for item in embeddings.data], "dimensions")


if __name__ == "__main__":
    main()
