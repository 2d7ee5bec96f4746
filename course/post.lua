-- wrk sends GET requests unless a script says otherwise. This one makes it POST a JSON body
-- read from a file, and print one line that bench.py parses:
--
--   wrk -t1 -c4 -d2s -s post.lua http://127.0.0.1:8000/predict -- body.json
--   RESULT requests=1234 duration_us=2000123 errors=0 p50_us=3100 p99_us=9800

local request_bytes

function init(args)
    local file = assert(io.open(args[1], "rb"))
    local body = file:read("*a")
    file:close()
    -- Formatted once per thread: building a request is then no work at all for wrk.
    request_bytes = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function request()
    return request_bytes
end

function done(summary, latency, requests)
    local e = summary.errors
    -- "status" counts answers that are not 2xx/3xx: a 422 or 500 is an error, not a fast answer.
    local errors = e.connect + e.read + e.write + e.status + e.timeout
    -- Percentiles only: wrk's mean latency is known to come out too high (wg/wrk#114).
    io.write(string.format("RESULT requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d\n",
        summary.requests, summary.duration, errors, latency:percentile(50), latency:percentile(99)))
end
