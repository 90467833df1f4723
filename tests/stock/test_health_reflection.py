"""grpc.health.v1 and server reflection, through the official grpcio packages."""

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from conftest import TIMEOUT

SERVICES = ["helloworld.Greeter", "routeguide.RouteGuide"]


# --- health -----------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "helloworld.Greeter", "routeguide.RouteGuide"])
def test_health_check_serving(channel, service):
    stub = health_pb2_grpc.HealthStub(channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_unknown_service(channel):
    # The health protocol says an unknown service is NOT_FOUND.
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service="helloworld.Greeter"), timeout=TIMEOUT)
    try:
        first = next(stream)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stream.cancel()


# --- reflection (v1alpha, via the official descriptor database) --------------


@pytest.fixture(scope="module")
def reflection_db(channel):
    return ProtoReflectionDescriptorDatabase(channel)


def test_reflection_list_services(reflection_db):
    services = set(reflection_db.get_services())
    for name in SERVICES + ["grpc.health.v1.Health"]:
        assert name in services, services


def test_reflection_resolves_greeter(reflection_db):
    pool = descriptor_pool.DescriptorPool(reflection_db)
    svc = pool.FindServiceByName("helloworld.Greeter")
    methods = {m.name: m for m in svc.methods}
    assert set(methods) == {"SayHello", "SayHelloAgain"}
    for name in ("SayHello", "SayHelloAgain"):
        m = methods[name]
        assert m.input_type.full_name == "helloworld.HelloRequest"
        assert m.output_type.full_name == "helloworld.HelloReply"
    req = pool.FindMessageTypeByName("helloworld.HelloRequest")
    assert [(f.name, f.number) for f in req.fields] == [("name", 1)]


def test_reflection_resolves_route_guide(reflection_db):
    pool = descriptor_pool.DescriptorPool(reflection_db)
    svc = pool.FindServiceByName("routeguide.RouteGuide")
    got = {
        m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
        for m in svc.methods
    }
    assert got == {
        "GetFeature": ("routeguide.Point", "routeguide.Feature", False, False),
        "ListFeatures": ("routeguide.Rectangle", "routeguide.Feature", False, True),
        "RecordRoute": ("routeguide.Point", "routeguide.RouteSummary", True, False),
        "RouteChat": ("routeguide.RouteNote", "routeguide.RouteNote", True, True),
    }


def test_reflection_file_containing_symbol(reflection_db):
    fdp = reflection_db.FindFileContainingSymbol("helloworld.HelloReply")
    assert fdp.package == "helloworld"
    assert "HelloReply" in [m.name for m in fdp.message_type]


# --- reflection v1: same messages, other service name -----------------------


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_raw(channel, version):
    call = channel.stream_stream(
        "/grpc.reflection.%s.ServerReflection/ServerReflectionInfo" % version,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="helloworld.Greeter"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="helloworld.NoSuchThing"),
    ]
    responses = []
    stream_error = None
    try:
        for resp in call(iter(requests), timeout=TIMEOUT):
            responses.append(resp)
    except grpc.RpcError as err:
        stream_error = err
    assert len(responses) >= 2, stream_error

    names = {s.name for s in responses[0].list_services_response.service}
    for name in SERVICES + ["grpc.health.v1.Health"]:
        assert name in names, names

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    greeter = [
        s for f in files if f.package == "helloworld" for s in f.service if s.name == "Greeter"
    ]
    assert len(greeter) == 1
    assert {m.name: m.input_type for m in greeter[0].method} == {
        "SayHello": ".helloworld.HelloRequest",
        "SayHelloAgain": ".helloworld.HelloRequest",
    }

    # An unknown symbol is NOT_FOUND, as the protocol (and grpc-go / grpc C++)
    # answer it: an in-stream ErrorResponse, and the stream stays open.
    assert stream_error is None, stream_error
    assert len(responses) == 3
    assert responses[2].WhichOneof("message_response") == "error_response"
    assert responses[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_db_unknown_symbol(reflection_db):
    with pytest.raises(KeyError):
        reflection_db.FindFileContainingSymbol("helloworld.NoSuchThing")
