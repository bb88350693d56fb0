# Sums an OpenAI batch output file with jq, as a baseline for `make bench`:
# requests by outcome and billed tokens by class, as sum_results.py prints them.
reduce inputs as $line (
  {total: 0, succeeded: 0, failed: 0, input: 0, cached_input: 0, cache_write: 0, output: 0};
  .total += 1
  | if $line.response.status_code == 200 then
      ($line.response.body.usage) as $usage
      | ($usage.prompt_tokens_details.cached_tokens // 0) as $cached
      | ($usage.prompt_tokens_details.cache_write_tokens // 0) as $write
      | .succeeded += 1
      | .input += ($usage.prompt_tokens - $cached - $write)
      | .cached_input += $cached
      | .cache_write += $write
      | .output += $usage.completion_tokens
    else .failed += 1 end
)
