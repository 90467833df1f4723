"""routeguide.RouteGuide with the exact behaviour of the gRPC tutorial's servers,
checked against expectations computed here from the tutorial's DB, which the
repository ships as data/route_guide_db.json.
"""

import math
import queue
import threading
import time

import grpc
import pytest

import route_guide_pb2 as pb
from conftest import TIMEOUT

KNOWN_NAME = "Berkshire Valley Management Area Trail, Jefferson, NJ, USA"
KNOWN_LAT, KNOWN_LON = 409146138, -746188906


# --- helpers ----------------------------------------------------------------


def point(lat, lon):
    return pb.Point(latitude=lat, longitude=lon)


def feature_tuple(f):
    return (f.name, f.location.latitude, f.location.longitude)


def expected_in_rect(db, a, b):
    """Features inside the rectangle with opposite corners a and b, given in any
    order, bounds inclusive, in DB order. Entries with an empty name are features
    too."""
    lat_lo, lat_hi = min(a[0], b[0]), max(a[0], b[0])
    lon_lo, lon_hi = min(a[1], b[1]), max(a[1], b[1])
    return [f for f in db if lat_lo <= f[1] <= lat_hi and lon_lo <= f[2] <= lon_hi]


def haversine(p, q):
    """Great-circle distance in metres between two E7 points, as the tutorial
    servers compute it (R = 6 371 000 m)."""
    r = 6371000.0
    lat1, lat2 = math.radians(p[0] / 1e7), math.radians(q[0] / 1e7)
    dlat = lat2 - lat1
    dlon = math.radians(q[1] / 1e7) - math.radians(p[1] / 1e7)
    a = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    c = 2 * math.atan2(math.sqrt(a), math.sqrt(1 - a))
    return r * c


# RecordRoute's feature_count counts every point where the DB has an entry at exactly that
# location, whatever its name, as the tutorial's Go server (proto.Equal over savedFeatures) and
# Python server (`if get_feature(db, point)`) do. A point visited twice counts twice.


def expected_summary(db, points):
    counted = {(f[1], f[2]) for f in db}
    feature_count = sum(1 for p in points if p in counted)
    distance = sum(haversine(points[i - 1], points[i]) for i in range(1, len(points)))
    return len(points), feature_count, int(distance)


class Chat:
    """A RouteChat call driven one note at a time."""

    def __init__(self, stub):
        self._q = queue.Queue()
        self._responses = stub.RouteChat(iter(self._q.get, None), timeout=TIMEOUT)

    def send(self, lat, lon, message):
        self._q.put(pb.RouteNote(location=point(lat, lon), message=message))

    def recv(self, n):
        return [(r.message, r.location.latitude, r.location.longitude) for r in
                (next(self._responses) for _ in range(n))]

    def close(self):
        """Ends the request stream; returns the replies still to come."""
        self._q.put(None)
        return [(r.message, r.location.latitude, r.location.longitude) for r in self._responses]

    def abort(self):
        self._q.put(None)
        self._responses.cancel()


# --- sanity of the reference data itself --------------------------------------


def test_reference_db_sanity(route_guide_db):
    assert (KNOWN_NAME, KNOWN_LAT, KNOWN_LON) in route_guide_db
    assert any(not f[0] for f in route_guide_db), "DB is expected to hold unnamed features"
    assert len({(f[1], f[2]) for f in route_guide_db}) == len(route_guide_db), "duplicate locations"


# --- GetFeature --------------------------------------------------------------


def test_get_feature_known(route_guide):
    f = route_guide.GetFeature(point(KNOWN_LAT, KNOWN_LON), timeout=TIMEOUT)
    assert feature_tuple(f) == (KNOWN_NAME, KNOWN_LAT, KNOWN_LON)


def test_get_feature_every_db_entry(route_guide, route_guide_db):
    for name, lat, lon in route_guide_db:
        f = route_guide.GetFeature(point(lat, lon), timeout=TIMEOUT)
        assert feature_tuple(f) == (name, lat, lon)


@pytest.mark.parametrize("lat,lon", [(0, 0), (KNOWN_LAT + 1, KNOWN_LON), (-1, 1)])
def test_get_feature_missing(route_guide, lat, lon):
    f = route_guide.GetFeature(point(lat, lon), timeout=TIMEOUT)
    assert f.name == ""
    assert f.HasField("location")
    assert (f.location.latitude, f.location.longitude) == (lat, lon)


# --- ListFeatures --------------------------------------------------------------


def list_features(stub, a, b):
    rect = pb.Rectangle(lo=point(*a), hi=point(*b))
    return [feature_tuple(f) for f in stub.ListFeatures(rect, timeout=TIMEOUT)]


LO, HI = (400000000, -750000000), (420000000, -730000000)


@pytest.mark.parametrize(
    "a,b",
    [
        (LO, HI),  # lo is the south-west corner
        (HI, LO),  # corners swapped
        ((LO[0], HI[1]), (HI[0], LO[1])),  # the other diagonal
        ((HI[0], LO[1]), (LO[0], HI[1])),
    ],
    ids=["lo-hi", "hi-lo", "se-nw", "nw-se"],
)
def test_list_features_tutorial_rectangle(route_guide, route_guide_db, a, b):
    expected = expected_in_rect(route_guide_db, a, b)
    assert expected, "tutorial rectangle should hold features"
    assert any(not f[0] for f in expected), "tutorial rectangle should hold unnamed features"
    assert list_features(route_guide, a, b) == expected


def test_list_features_bounds_inclusive(route_guide, route_guide_db):
    # Rectangles whose every edge passes exactly through one DB feature each.
    name, lat, lon = route_guide_db[0]
    other = route_guide_db[1]
    for a, b in [
        ((lat, lon), (lat + 10000000, lon + 10000000)),  # feature on the lo corner
        ((lat - 10000000, lon - 10000000), (lat, lon)),  # feature on the hi corner
        ((lat, lon), (other[1], other[2])),  # two features on opposite corners
        ((other[1], other[2]), (lat, lon)),
    ]:
        expected = expected_in_rect(route_guide_db, a, b)
        assert (name, lat, lon) in expected
        assert list_features(route_guide, a, b) == expected


def test_list_features_single_point(route_guide):
    assert list_features(route_guide, (KNOWN_LAT, KNOWN_LON), (KNOWN_LAT, KNOWN_LON)) == [
        (KNOWN_NAME, KNOWN_LAT, KNOWN_LON)
    ]
    # One unit off on any side excludes it.
    assert list_features(route_guide, (KNOWN_LAT + 1, KNOWN_LON), (KNOWN_LAT + 5, KNOWN_LON)) == []
    assert list_features(route_guide, (KNOWN_LAT, KNOWN_LON - 5), (KNOWN_LAT, KNOWN_LON - 1)) == []


def test_list_features_empty(route_guide):
    assert list_features(route_guide, (0, 0), (1000, 1000)) == []


def test_list_features_everything(route_guide, route_guide_db):
    assert list_features(route_guide, (-900000000, -1800000000), (900000000, 1800000000)) == route_guide_db


# --- RecordRoute ---------------------------------------------------------------


def record(stub, points):
    return stub.RecordRoute(iter([point(*p) for p in points]), timeout=TIMEOUT)


def test_record_route(route_guide, route_guide_db):
    named = [(f[1], f[2]) for f in route_guide_db if f[0]]
    unnamed = [(f[1], f[2]) for f in route_guide_db if not f[0]]
    points = [
        named[0],
        (407000000, -745000000),  # not in the DB
        named[5],
        unnamed[0],  # in the DB with an empty name: still a feature entry
        named[5],  # visited twice: counted twice
        (0, 0),
        named[10],
    ]
    s = record(route_guide, points)
    assert (s.point_count, s.feature_count, s.distance) == expected_summary(route_guide_db, points)
    # The rule above, spelled out.
    assert (s.point_count, s.feature_count) == (7, 5)
    assert s.elapsed_time in (0, 1)


def test_record_route_long(route_guide, route_guide_db):
    points = [(f[1], f[2]) for f in route_guide_db] + [(1, 2), (-3, 4)]
    s = record(route_guide, points)
    assert (s.point_count, s.feature_count, s.distance) == expected_summary(route_guide_db, points)


def test_record_route_single_point(route_guide):
    s = record(route_guide, [(KNOWN_LAT, KNOWN_LON)])
    assert (s.point_count, s.feature_count, s.distance) == (1, 1, 0)


def test_record_route_empty(route_guide):
    s = record(route_guide, [])
    assert (s.point_count, s.feature_count, s.distance, s.elapsed_time) == (0, 0, 0, 0)


def test_record_route_elapsed_time(route_guide, route_guide_db):
    a, b = (KNOWN_LAT, KNOWN_LON), (route_guide_db[0][1], route_guide_db[0][2])

    def slow():
        yield point(*a)
        time.sleep(1.1)
        yield point(*b)

    s = route_guide.RecordRoute(slow(), timeout=TIMEOUT)
    assert (s.point_count, s.feature_count, s.distance) == expected_summary(route_guide_db, [a, b])
    assert s.elapsed_time in (1, 2)


# --- RouteChat -----------------------------------------------------------------

A = (KNOWN_LAT, KNOWN_LON)
B = (0, 1)
NOTES = [(A, "1"), (B, "2"), (A, "3"), (A, "4"), (B, "5")]
# After each sent note, the earlier notes of this call at the same location.
EXPECTED_AFTER = [[], [], [("1",) + A], [("1",) + A, ("3",) + A], [("2",) + B]]


def test_route_chat_batch(route_guide):
    reqs = [pb.RouteNote(location=point(*loc), message=m) for loc, m in NOTES]
    got = [(r.message, r.location.latitude, r.location.longitude)
           for r in route_guide.RouteChat(iter(reqs), timeout=TIMEOUT)]
    assert got == [n for after in EXPECTED_AFTER for n in after]


def test_route_chat_interactive(route_guide):
    # Sends one note, then reads exactly the replies it must cause, before
    # sending the next: checks both the content and when replies arrive.
    chat = Chat(route_guide)
    try:
        for (loc, message), expected in zip(NOTES, EXPECTED_AFTER):
            chat.send(loc[0], loc[1], message)
            assert chat.recv(len(expected)) == expected, "after note %s" % message
        assert chat.close() == []
    finally:
        chat.abort()


def test_route_chat_calls_are_isolated(route_guide):
    # Two concurrent calls at the same location don't see each other's notes.
    one, two = Chat(route_guide), Chat(route_guide)
    try:
        one.send(A[0], A[1], "one-1")
        two.send(A[0], A[1], "two-1")
        one.send(A[0], A[1], "one-2")
        assert one.recv(1) == [("one-1",) + A]
        two.send(A[0], A[1], "two-2")
        assert two.recv(1) == [("two-1",) + A]
        assert one.close() == []
        assert two.close() == []
    finally:
        one.abort()
        two.abort()
    # A later call starts with no notes either.
    three = Chat(route_guide)
    try:
        three.send(A[0], A[1], "three-1")
        assert three.close() == []
    finally:
        three.abort()


def test_route_chat_empty(route_guide):
    assert list(route_guide.RouteChat(iter([]), timeout=TIMEOUT)) == []


def test_concurrent_calls(route_guide):
    # Several RouteGuide calls in flight at once, from threads.
    errors = []

    def work(i):
        try:
            f = route_guide.GetFeature(point(KNOWN_LAT, KNOWN_LON), timeout=TIMEOUT)
            assert f.name == KNOWN_NAME
            s = record(route_guide, [(KNOWN_LAT, KNOWN_LON)] * (i + 1))
            assert (s.point_count, s.feature_count) == (i + 1, i + 1)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
