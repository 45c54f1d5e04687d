-- wrk script of bench/run: POST /v1/chat/completions with a small JSON body, keep-alive.
-- Environment: BENCH_HOST (Host header, default models.local), BENCH_HEADER
-- ("name: value" lines, optional, e.g. "x-experiment-id: exp1" or LiteLLM's
-- "Authorization: Bearer ...").
-- done() prints one machine-readable line:
--   BENCH requests=N duration_us=N rps=F p50_us=N p90_us=N p99_us=N p999_us=N
--         max_us=N errors=N non2xx=N
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
wrk.headers["Host"] = os.getenv("BENCH_HOST") or "models.local"
wrk.headers["Content-Type"] = "application/json"
local extra = os.getenv("BENCH_HEADER") or ""
for line in extra:gmatch("[^\n]+") do
  local name, value = line:match("^%s*([^:]-)%s*:%s*(.-)%s*$")
  if name and name ~= "" then wrk.headers[name] = value end
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, errors, e.status))
end
