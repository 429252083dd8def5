-- wrk reporting hook for bench/compare.sh: one machine-readable line per run.
-- With PIPELINE=N in the environment, every write carries N requests (HTTP/1 pipelining).
local depth = tonumber(os.getenv("PIPELINE") or "1")
if depth > 1 then
  init = function(args)
    local batch = {}
    for i = 1, depth do batch[i] = wrk.format(nil, "/") end
    req = table.concat(batch)
  end
  request = function() return req end
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %.0f %.2f %.2f %.2f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, errors, summary.requests))
end
