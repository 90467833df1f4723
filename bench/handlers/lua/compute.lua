-- bench.Compute/Route: the RecordRoute loop of handlers/route_guide.lua (a table per point,
-- haversine between consecutive points) over a generated route, so the "compute" scenario
-- measures the interpreter running script code against compiled code doing the same.

local EARTH_RADIUS = 6371000 -- metres
local COORD_FACTOR = 1e7
local RADIANS_PER_DEGREE = math.pi / 180 -- what math.rad multiplies by
local sin, cos, atan, sqrt = math.sin, math.cos, math.atan, math.sqrt

local function distance(p1, p2)
  local lat1 = p1.latitude / COORD_FACTOR * RADIANS_PER_DEGREE
  local lat2 = p2.latitude / COORD_FACTOR * RADIANS_PER_DEGREE
  local dlat = lat2 - lat1
  local dlon = (p2.longitude - p1.longitude) / COORD_FACTOR * RADIANS_PER_DEGREE
  local a = sin(dlat / 2) ^ 2 + cos(lat1) * cos(lat2) * sin(dlon / 2) ^ 2
  local c = 2 * atan(sqrt(a), sqrt(1 - a))
  return EARTH_RADIUS * c
end

function Route(req, ctx)
  local n = req.points
  local total, previous = 0.0, nil
  for i = 0, n - 1 do
    local point = {
      latitude = 400000000 + (i * 7919) % 2000000 - 1000000,
      longitude = -740000000 + (i * 104729) % 2000000 - 1000000,
    }
    if previous then total = total + distance(previous, point) end
    previous = point
  end
  return { point_count = n, distance = math.tointeger(math.floor(total)) }
end
