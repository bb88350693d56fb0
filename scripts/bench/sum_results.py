#!/usr/bin/env python3
"""Sums an OpenAI batch output file one JSON document per line, the plain
way, as the baseline for `make bench`. Prints the same totals as
`batchgate cost --json`: requests by outcome and billed tokens by class
(succeeded requests; cached and cache-write tokens are inside prompt_tokens).
"""

import json
import sys


def main():
    totals = dict.fromkeys(
        ("total", "succeeded", "failed", "input", "cached_input", "cache_write", "output"), 0
    )
    with open(sys.argv[1], "rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            totals["total"] += 1
            response = record.get("response") or {}
            if response.get("status_code") != 200:
                totals["failed"] += 1
                continue
            totals["succeeded"] += 1
            usage = (response.get("body") or {}).get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            cached = details.get("cached_tokens", 0)
            cache_write = details.get("cache_write_tokens", 0)
            totals["input"] += usage.get("prompt_tokens", 0) - cached - cache_write
            totals["cached_input"] += cached
            totals["cache_write"] += cache_write
            totals["output"] += usage.get("completion_tokens", 0)
    print(json.dumps(totals, sort_keys=True))


if __name__ == "__main__":
    main()
