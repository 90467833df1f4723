-- RouteGuide from the gRPC tutorial, answered from data/route_guide_db.json.
-- Points are E7 coordinates (degrees * 10^7).

-- A point as one table key. Both coordinates are int32, so latitude * 2^32 + longitude is a
-- different integer for every point (and an integer key needs no string to be built).
local function key(point)
  return point.latitude * 0x100000000 + point.longitude
end

-- Features by location, built once when the script loads.
local features_at = {}
for _, feature in ipairs(data.route_guide_db) do
  local k = key(feature.location)
  if features_at[k] == nil then features_at[k] = feature end
end

local origin = { latitude = 0, longitude = 0 }

-- The feature at a point, or a feature with an empty name there.
function GetFeature(point, ctx)
  return features_at[key(point)] or { name = "", location = point }
end

-- Every feature inside the rectangle (corners in either order, bounds inclusive), in data order.
function ListFeatures(rect, ctx)
  local lo, hi = rect.lo or origin, rect.hi or origin
  local left, right = math.min(lo.longitude, hi.longitude), math.max(lo.longitude, hi.longitude)
  local bottom, top = math.min(lo.latitude, hi.latitude), math.max(lo.latitude, hi.latitude)
  for _, feature in ipairs(data.route_guide_db) do
    local p = feature.location
    if p.longitude >= left and p.longitude <= right and p.latitude >= bottom and p.latitude <= top then
      ctx:send(feature)
    end
  end
end

local EARTH_RADIUS = 6371000 -- metres
local COORD_FACTOR = 1e7
local RADIANS_PER_DEGREE = math.pi / 180 -- what math.rad multiplies by
-- Library functions used for every point, looked up once here rather than at each use.
local sin, cos, atan, sqrt = math.sin, math.cos, math.atan, math.sqrt

-- Great-circle distance in metres between two E7 points (haversine).
local function distance(p1, p2)
  local lat1 = p1.latitude / COORD_FACTOR * RADIANS_PER_DEGREE
  local lat2 = p2.latitude / COORD_FACTOR * RADIANS_PER_DEGREE
  local dlat = lat2 - lat1
  local dlon = (p2.longitude - p1.longitude) / COORD_FACTOR * RADIANS_PER_DEGREE
  local a = sin(dlat / 2) ^ 2 + cos(lat1) * cos(lat2) * sin(dlon / 2) ^ 2
  local c = 2 * atan(sqrt(a), sqrt(1 - a))
  return EARTH_RADIUS * c
end

-- Points on a route: how many, how many are features, how far, how long.
function RecordRoute(points, ctx)
  local point_count, feature_count, total, previous = 0, 0, 0.0, nil
  for point in points do
    point_count = point_count + 1
    if features_at[key(point)] then feature_count = feature_count + 1 end
    if previous then total = total + distance(previous, point) end
    previous = point
  end
  return {
    point_count = point_count,
    feature_count = feature_count,
    distance = math.tointeger(math.floor(total)),
    elapsed_time = math.tointeger(math.floor(ctx:elapsed())),
  }
end

-- For each note, send every earlier note of this call at the same place, then keep it.
function RouteChat(notes, ctx)
  local by_place = {}
  for note in notes do
    local k = key(note.location or origin)
    local earlier = by_place[k]
    if earlier == nil then
      earlier = {}
      by_place[k] = earlier
    end
    for _, previous in ipairs(earlier) do
      ctx:send(previous)
    end
    earlier[#earlier + 1] = note
  end
end
