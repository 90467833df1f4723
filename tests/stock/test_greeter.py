"""helloworld.Greeter, called exactly as the gRPC tutorial's Python client does."""

import grpc
import pytest

import helloworld_pb2
import helloworld_pb2_grpc
from conftest import TIMEOUT


def test_say_hello(greeter):
    reply = greeter.SayHello(helloworld_pb2.HelloRequest(name="you"), timeout=TIMEOUT)
    assert reply.message == "Hello, you!"


def test_say_hello_again(greeter):
    reply = greeter.SayHelloAgain(helloworld_pb2.HelloRequest(name="you"), timeout=TIMEOUT)
    assert reply.message == "Hello again, you!"


@pytest.mark.parametrize("name", ["Zoë", "世界", "🙂 émoji", "ünïcödé ñ"])
def test_say_hello_unicode(greeter, name):
    reply = greeter.SayHello(helloworld_pb2.HelloRequest(name=name), timeout=TIMEOUT)
    assert reply.message == "Hello, %s!" % name


def test_say_hello_again_unicode(greeter):
    reply = greeter.SayHelloAgain(helloworld_pb2.HelloRequest(name="Ærøskøbing"), timeout=TIMEOUT)
    assert reply.message == "Hello again, Ærøskøbing!"


def test_say_hello_empty_name(greeter):
    # proto3: an empty string is the default, so the request is an empty message.
    reply = greeter.SayHello(helloworld_pb2.HelloRequest(), timeout=TIMEOUT)
    assert reply.message == "Hello, !"


def test_say_hello_gzip_request(greeter):
    reply = greeter.SayHello(
        helloworld_pb2.HelloRequest(name="gzip " * 50),
        timeout=TIMEOUT,
        compression=grpc.Compression.Gzip,
    )
    assert reply.message == "Hello, %s!" % ("gzip " * 50)


def test_say_hello_gzip_channel(addr):
    # A channel whose every call is gzip-compressed (and which advertises gzip
    # for responses, as grpcio always does).
    with grpc.insecure_channel(addr, compression=grpc.Compression.Gzip) as ch:
        stub = helloworld_pb2_grpc.GreeterStub(ch)
        reply = stub.SayHelloAgain(helloworld_pb2.HelloRequest(name="you"), timeout=TIMEOUT)
    assert reply.message == "Hello again, you!"


def test_say_hello_with_deadline(greeter):
    # The call carries a grpc-timeout header; the server must honour it without failing.
    reply, call = greeter.SayHello.with_call(helloworld_pb2.HelloRequest(name="deadline"), timeout=2.5)
    assert reply.message == "Hello, deadline!"
    assert call.code() == grpc.StatusCode.OK


def test_say_hello_future(greeter):
    futures = [
        greeter.SayHello.future(helloworld_pb2.HelloRequest(name="n%d" % i), timeout=TIMEOUT)
        for i in range(20)
    ]
    assert [f.result().message for f in futures] == ["Hello, n%d!" % i for i in range(20)]


def test_say_hello_with_metadata(greeter):
    # Custom request metadata must not disturb the call.
    reply = greeter.SayHello(
        helloworld_pb2.HelloRequest(name="meta"),
        timeout=TIMEOUT,
        metadata=(("x-test", "1"), ("x-bin-bin", b"\x00\x01")),
    )
    assert reply.message == "Hello, meta!"


def test_unknown_method_is_unimplemented(channel):
    call = channel.unary_unary(
        "/helloworld.Greeter/NoSuchMethod",
        request_serializer=helloworld_pb2.HelloRequest.SerializeToString,
        response_deserializer=helloworld_pb2.HelloReply.FromString,
    )
    with pytest.raises(grpc.RpcError) as info:
        call(helloworld_pb2.HelloRequest(name="x"), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unknown_service_is_unimplemented(channel):
    call = channel.unary_unary(
        "/nosuch.Service/Method",
        request_serializer=helloworld_pb2.HelloRequest.SerializeToString,
        response_deserializer=helloworld_pb2.HelloReply.FromString,
    )
    with pytest.raises(grpc.RpcError) as info:
        call(helloworld_pb2.HelloRequest(name="x"), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
