"""Synchronous grpcio peer for the protoserve benchmarks.

Serves helloworld.Greeter, routeguide.RouteGuide (the gRPC tutorial's
behaviour) and bench.Echo the way the grpc.io Python tutorial does:
``grpc.server(futures.ThreadPoolExecutor(max_workers=10))``. The stubs are
generated at startup by grpcio-tools from the given proto directories into a
temporary directory, so nothing generated is committed.

    python server.py --listen 127.0.0.1:0 --data route_guide_db.json \
        --protos ../../../protos --protos ../../protos
"""

import argparse
import importlib
import json
import math
import os
import sys
import tempfile
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

PROTOS = ("helloworld.proto", "route_guide.proto", "bench.proto")


def generate_stubs(proto_dirs):
    """Runs grpcio-tools' protoc on PROTOS; returns the temp dir holding the modules."""
    out = tempfile.mkdtemp(prefix="bench-py-stubs-")
    import grpc_tools

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", f"-I{wkt}"] + [f"-I{d}" for d in proto_dirs]
    args += [f"--python_out={out}", f"--grpc_python_out={out}"]
    for name in PROTOS:
        if not any(os.path.exists(os.path.join(d, name)) for d in proto_dirs):
            sys.exit(f"{name} not found in {proto_dirs}")
        args.append(name)
    if protoc.main(args) != 0:
        sys.exit("grpcio-tools protoc failed")
    sys.path.insert(0, out)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:50051")
    ap.add_argument("--data", default=None)
    ap.add_argument("--protos", action="append", required=True)
    args = ap.parse_args()

    generate_stubs(args.protos)
    hw = importlib.import_module("helloworld_pb2")
    hw_grpc = importlib.import_module("helloworld_pb2_grpc")
    rg = importlib.import_module("route_guide_pb2")
    rg_grpc = importlib.import_module("route_guide_pb2_grpc")
    bp = importlib.import_module("bench_pb2")  # noqa: F841 (messages used via requests)
    bp_grpc = importlib.import_module("bench_pb2_grpc")

    features = []
    if args.data:
        with open(args.data) as f:
            for item in json.load(f):
                features.append(
                    rg.Feature(
                        name=item.get("name", ""),
                        location=rg.Point(
                            latitude=item["location"]["latitude"],
                            longitude=item["location"]["longitude"],
                        ),
                    )
                )

    class Greeter(hw_grpc.GreeterServicer):
        def SayHello(self, request, context):
            return hw.HelloReply(message=f"Hello, {request.name}!")

        def SayHelloAgain(self, request, context):
            return hw.HelloReply(message=f"Hello, {request.name}!")

    class Echo(bp_grpc.EchoServicer):
        def Echo(self, request, context):
            return request

    def get_feature(point):
        for feature in features:
            if feature.location == point:
                return feature
        return None

    def get_distance(start, end):
        coord_factor = 10000000.0
        lat1 = math.radians(start.latitude / coord_factor)
        lat2 = math.radians(end.latitude / coord_factor)
        lon1 = math.radians(start.longitude / coord_factor)
        lon2 = math.radians(end.longitude / coord_factor)
        dlat, dlon = lat2 - lat1, lon2 - lon1
        a = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
        return int(6371000 * 2 * math.atan2(math.sqrt(a), math.sqrt(1 - a)))

    class RouteGuide(rg_grpc.RouteGuideServicer):
        def GetFeature(self, request, context):
            feature = get_feature(request)
            return feature if feature is not None else rg.Feature(name="", location=request)

        def ListFeatures(self, request, context):
            left = min(request.lo.longitude, request.hi.longitude)
            right = max(request.lo.longitude, request.hi.longitude)
            top = max(request.lo.latitude, request.hi.latitude)
            bottom = min(request.lo.latitude, request.hi.latitude)
            for feature in features:
                loc = feature.location
                if left <= loc.longitude <= right and bottom <= loc.latitude <= top:
                    yield feature

        def RecordRoute(self, request_iterator, context):
            point_count = feature_count = distance = 0
            prev = None
            start = time.time()
            for point in request_iterator:
                point_count += 1
                feature = get_feature(point)
                if feature is not None and feature.name:
                    feature_count += 1
                if prev is not None:
                    distance += get_distance(prev, point)
                prev = point
            return rg.RouteSummary(
                point_count=point_count,
                feature_count=feature_count,
                distance=distance,
                elapsed_time=int(time.time() - start),
            )

        def RouteChat(self, request_iterator, context):
            prev_notes = []
            for new_note in request_iterator:
                for prev_note in prev_notes:
                    if prev_note.location == new_note.location:
                        yield prev_note
                prev_notes.append(new_note)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    hw_grpc.add_GreeterServicer_to_server(Greeter(), server)
    rg_grpc.add_RouteGuideServicer_to_server(RouteGuide(), server)
    bp_grpc.add_EchoServicer_to_server(Echo(), server)
    host = args.listen.rsplit(":", 1)[0]
    port = server.add_insecure_port(args.listen)
    if port == 0:
        sys.exit(f"cannot bind {args.listen}")
    server.start()
    print(f"python grpcio peer listening on {host}:{port} ({len(features)} features)", file=sys.stderr, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
