"""Shared fixtures for the stock-client test suite.

These tests talk to a running protoserve with stock gRPC clients (grpcio and
the official health/reflection packages), using only stubs generated from the
.proto files under protos/. tests/stock/run.sh starts the server(s), generates
the stubs and sets:

  PROTOSERVE_ADDR              host:port of the server under test (required)
  PROTOSERVE_ROUTE_GUIDE_ADDR  host:port of the server answering RouteGuide
                               (defaults to PROTOSERVE_ADDR)
  PROTOSERVE_ROUTE_GUIDE_DB    path of route_guide_db.json (defaults to the
                               repository's data/route_guide_db.json)
  PROTOSERVE_STUBS             directory holding the generated *_pb2*.py
                               (if unset or absent, they are generated here)
"""

import json
import os
import subprocess
import sys
import tempfile

import grpc
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))

# Every call carries a deadline so that a misbehaving server fails a test
# instead of hanging the suite.
TIMEOUT = 5.0


def _ensure_stubs():
    stubs = os.environ.get("PROTOSERVE_STUBS")
    if not stubs or not os.path.isdir(stubs):
        stubs = tempfile.mkdtemp(prefix="protoserve-stubs-")
        subprocess.run(
            [
                sys.executable, "-m", "grpc_tools.protoc",
                "-I" + os.path.join(REPO_ROOT, "protos"),
                "--python_out=" + stubs,
                "--grpc_python_out=" + stubs,
                os.path.join(REPO_ROOT, "protos", "helloworld.proto"),
                os.path.join(REPO_ROOT, "protos", "route_guide.proto"),
            ],
            check=True,
        )
    if stubs not in sys.path:
        sys.path.insert(0, stubs)


_ensure_stubs()


def _addr(var, fallback=None):
    value = os.environ.get(var) or (os.environ.get(fallback) if fallback else None)
    if not value:
        pytest.exit(
            "%s is not set: run tests/stock/run.sh, or start protoserve and export it" % var,
            returncode=2,
        )
    return value


def _channel(addr):
    channel = grpc.insecure_channel(addr)
    try:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    except grpc.FutureTimeoutError:
        channel.close()
        pytest.fail("could not connect to protoserve at %s" % addr)
    return channel


@pytest.fixture(scope="session")
def addr():
    return _addr("PROTOSERVE_ADDR")


@pytest.fixture(scope="session")
def channel(addr):
    ch = _channel(addr)
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def greeter(channel):
    import helloworld_pb2_grpc

    return helloworld_pb2_grpc.GreeterStub(channel)


@pytest.fixture(scope="session")
def rg_addr():
    return _addr("PROTOSERVE_ROUTE_GUIDE_ADDR", "PROTOSERVE_ADDR")


@pytest.fixture(scope="session")
def rg_channel(rg_addr):
    ch = _channel(rg_addr)
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def route_guide(rg_channel):
    """A RouteGuide stub. The shipped handlers answer every RouteGuide method, so
    nothing is skipped: a server that does not answer fails these tests."""
    import route_guide_pb2_grpc

    return route_guide_pb2_grpc.RouteGuideStub(rg_channel)


@pytest.fixture(scope="session")
def route_guide_db():
    """The tutorial's DB as a list of (name, latitude, longitude), in file order."""
    path = os.environ.get("PROTOSERVE_ROUTE_GUIDE_DB") or os.path.join(
        REPO_ROOT, "data", "route_guide_db.json"
    )
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    return [
        (
            entry.get("name", ""),
            int(entry["location"].get("latitude", 0)),
            int(entry["location"].get("longitude", 0)),
        )
        for entry in raw
    ]


@pytest.fixture(scope="session")
def admin_channel():
    """A channel to the server's admin listener (gRPC front end)."""
    ch = _channel(_addr("PROTOSERVE_ADMIN_ADDR"))
    yield ch
    ch.close()
