-- wrk script for lbsync's benchmark: a fixed request rate and a per-second timeline.
-- wrk has no rate flag: each connection waits DELAY_MS before each request, so the rate is
-- about connections x 1000 / (DELAY_MS + latency). Every thread counts, per wall-clock
-- second, the requests it sent and the answers it got by status; done() merges the threads'
-- tables and writes them with wrk's totals (socket errors included) as JSON to OUT_FILE.
-- Once STOP_FILE exists no new request starts, so that when wrk is interrupted a little
-- later, sent - answered counts exactly the requests that never got an answer.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "20")
local out_file = os.getenv("OUT_FILE") or "wrk.json"
local stop_file = os.getenv("STOP_FILE") or (out_file .. ".stop")
-- CLOSE=1: a new connection per request (Connection: close), like short-lived clients;
-- that is where a reload without socket transfer loses connections.
local headers = nil
if os.getenv("CLOSE") == "1" then headers = {["Connection"] = "close"} end
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  sent = {}
  ok = {}
  bad = {}
end

function delay()
  local f = io.open(stop_file, "r")
  if f then
    f:close()
    return 3600000
  end
  return delay_ms
end

function request()
  local s = os.time()
  sent[s] = (sent[s] or 0) + 1
  return wrk.format(nil, "/mydata", headers)
end

function response(status, headers, body)
  local s = os.time()
  if status >= 200 and status < 400 then
    ok[s] = (ok[s] or 0) + 1
  else
    bad[s] = (bad[s] or 0) + 1
  end
end

local function merge(into, t)
  for k, v in pairs(t or {}) do into[k] = (into[k] or 0) + v end
end

local function obj(t)
  local parts = {}
  for k, v in pairs(t) do table.insert(parts, string.format('"%d":%d', k, v)) end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local s, o, b = {}, {}, {}
  for _, t in ipairs(threads) do
    merge(s, t:get("sent"))
    merge(o, t:get("ok"))
    merge(b, t:get("bad"))
  end
  local e = summary.errors
  local f = io.open(out_file, "w")
  f:write(string.format(
    '{"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},' ..
    '"sent":%s,"ok":%s,"bad":%s}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    obj(s), obj(o), obj(b)))
  f:close()
end
