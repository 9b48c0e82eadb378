-- wrk script: POSTs the JSON request bodies of the file named by $BODIES (one
-- per line), in turn. With one body the request is built once (wrk's static
-- mode, cheapest for the load generator). $AUTHORIZATION, when set and not
-- empty, is sent as the Authorization header of every request (e.g.
-- "Bearer <key>"); it is part of the prebuilt request(s), so it costs the load
-- generator nothing per request.
local path = os.getenv("BODIES") or error("set BODIES to a file of request bodies")
local lines = {}
for line in io.lines(path) do
  if #line > 0 then lines[#lines + 1] = line end
end
assert(#lines > 0, path .. " holds no request body")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local authorization = os.getenv("AUTHORIZATION")
if authorization and #authorization > 0 then
  wrk.headers["Authorization"] = authorization
end

if #lines == 1 then
  wrk.body = lines[1]
else
  local requests = nil
  local i = 0
  request = function()
    if requests == nil then
      requests = {}
      for k, body in ipairs(lines) do
        -- nil headers: wrk.headers, the Authorization above included.
        requests[k] = wrk.format("POST", nil, nil, body)
      end
      -- Threads (and so connections) start at different places in the list.
      i = math.random(#requests) - 1
    end
    i = i % #requests + 1
    return requests[i]
  end
end
