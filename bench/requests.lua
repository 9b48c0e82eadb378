-- wrk script: POSTs the JSON request bodies of the file named by $BODIES (one
-- per line), in turn. With one body the request is built once (wrk's static
-- mode, cheapest for the load generator).
local path = os.getenv("BODIES") or error("set BODIES to a file of request bodies")
local lines = {}
for line in io.lines(path) do
  if #line > 0 then lines[#lines + 1] = line end
end
assert(#lines > 0, path .. " holds no request body")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

if #lines == 1 then
  wrk.body = lines[1]
else
  local requests = nil
  local i = 0
  request = function()
    if requests == nil then
      requests = {}
      for k, body in ipairs(lines) do
        requests[k] = wrk.format("POST", nil, nil, body)
      end
      -- Threads (and so connections) start at different places in the list.
      i = math.random(#requests) - 1
    end
    i = i % #requests + 1
    return requests[i]
  end
end
