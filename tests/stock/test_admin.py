"""The admin listener's gRPC errors, as a grpc-core client (grpcio) sees them.

The admin port sent an error as HEADERS carrying grpc-status, then an empty DATA frame
ending the stream; grpcio refused that and reported UNKNOWN "Stream removed" for every
error. It is a Trailers-Only answer now, and the client reads the real status.
"""

import grpc

from conftest import TIMEOUT


def _raw(channel, method):
    return channel.unary_unary(
        "/protoserve.admin.v1.Admin/" + method,
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )


def test_admin_status_answers(admin_channel):
    # Status takes an empty request; its answer is not empty.
    assert len(_raw(admin_channel, "Status")(b"", timeout=TIMEOUT)) > 0


def test_admin_errors_keep_their_status(admin_channel):
    # GetCall { id: 999999 }: no such call.
    try:
        _raw(admin_channel, "GetCall")(b"\x08\xbf\x84\x3d", timeout=TIMEOUT)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, (e.code(), e.details())
    else:
        raise AssertionError("GetCall of an unknown id succeeded")
    # Verify { method: "helloworld.Greeter/Nope" }: no such method.
    request = b"\x0a\x17helloworld.Greeter/Nope"
    try:
        _raw(admin_channel, "Verify")(request, timeout=TIMEOUT)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, (e.code(), e.details())
        assert "Nope" in e.details(), e.details()
    else:
        raise AssertionError("Verify of an unknown method succeeded")
