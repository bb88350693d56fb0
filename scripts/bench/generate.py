#!/usr/bin/env python3
"""Writes a seeded OpenAI-shaped batch output file for `make bench`.

Each line is a Chat Completions result of about 1.2 KB. About 9 % of the
lines are failed requests (status 400, 429 or 500 with an error body). The
same seed and line count always give the same file.
"""

import argparse
import json
import random

WORDS = (
    "package library daemon utility documentation networking security font game "
    "scientific data files command line desktop application server developer tool "
    "provides implements supports configuration interface protocol encryption "
    "compression parser renderer plugin module extension framework runtime kernel "
    "résumé naïve café"
).split()


def content(rng):
    words = []
    while sum(len(word) + 1 for word in words) < 500:
        words.append(rng.choice(WORDS))
    text = " ".join(words)
    # Quotes, line breaks and non-ASCII text, as model output has them.
    return f'{{"category": "library", "summary": "{text}"}}\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--output", required=True)
    arguments = parser.parse_args()

    rng = random.Random(arguments.seed)
    contents = [json.dumps(content(rng)) for _ in range(256)]
    errors = [
        (400, "invalid_request_error", "The request body is invalid: max_tokens is too large."),
        (429, "rate_limit_exceeded", "Rate limit reached for requests."),
        (500, "server_error", "The server had an error while processing your request."),
    ]
    with open(arguments.output, "w", encoding="utf-8", buffering=1 << 22) as out:
        for index in range(arguments.lines):
            custom_id = f"pkg-{index:07d}"
            request_id = f"{rng.getrandbits(64):016x}"
            if rng.random() < 0.09:
                status, kind, message = errors[rng.randrange(3)]
                out.write(
                    f'{{"id":"batch_req_{request_id}","custom_id":"{custom_id}",'
                    f'"response":{{"status_code":{status},"request_id":"{request_id}",'
                    f'"body":{{"error":{{"message":"{message}","type":"{kind}","param":null,"code":null}}}}}},'
                    f'"error":null}}\n'
                )
                continue
            prompt = rng.randrange(150, 1200)
            cached = rng.choice((0, 0, 0, rng.randrange(0, prompt)))
            completion = rng.randrange(20, 400)
            reasoning = rng.randrange(0, completion)
            out.write(
                f'{{"id":"batch_req_{request_id}","custom_id":"{custom_id}",'
                f'"response":{{"status_code":200,"request_id":"{request_id}","body":{{'
                f'"id":"chatcmpl-{request_id}","object":"chat.completion","created":1764806400,'
                f'"model":"gpt-6-luna-2026-09-01","choices":[{{"index":0,"message":{{'
                f'"role":"assistant","content":{contents[rng.randrange(256)]},"refusal":null,'
                f'"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],'
                f'"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},'
                f'"total_tokens":{prompt + completion},'
                f'"prompt_tokens_details":{{"cached_tokens":{cached},"audio_tokens":0}},'
                f'"completion_tokens_details":{{"reasoning_tokens":{reasoning},"audio_tokens":0,'
                f'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},'
                f'"service_tier":"default","system_fingerprint":"fp_{request_id[:10]}"}}}},'
                f'"error":null}}\n'
            )


if __name__ == "__main__":
    main()
