"""A Calculator plugin written in Python with grpcio, for calcplug's interop tests.

It speaks go-plugin's gRPC protocol by hand, as go-plugin's guide for non-Go plugins describes:
check the magic cookie, listen on a Unix socket, serve `calcplug.v1.Calculator`, the health
service (`plugin`: SERVING) and go-plugin's controller, print the handshake line, and log on
stderr in `[LEVEL] message` form. It implements interface 1.0 only: the scientific calls are
left to grpcio's default, UNIMPLEMENTED, as a plugin built against an older contract would.

    calc_plugin.py GENERATED_CODE_DIR MAGIC_COOKIE_VALUE
"""

import math
import os
import sys
import tempfile
import threading
import time
from concurrent import futures

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402

from calcplug.v1 import calculator_pb2 as pb  # noqa: E402
from calcplug.v1 import calculator_pb2_grpc as pb_grpc  # noqa: E402
import go_plugin_pb2  # noqa: E402
import go_plugin_pb2_grpc  # noqa: E402

COOKIE_KEY = "CALCULATOR_PLUGIN"


def log(level, message):
    print(f"[{level}] {message}", file=sys.stderr, flush=True)


class Calculator(pb_grpc.CalculatorServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.state = pb.PLUGIN_STATE_UNINITIALIZED
        self.started = 0
        self.requests = 0

    def _enter(self):
        with self.lock:
            if self.state != pb.PLUGIN_STATE_READY:
                return pb.Error(code=pb.ERROR_CODE_NOT_INITIALIZED,
                                message="the Python plugin is not initialized")
            self.requests += 1
            return None

    def _compute(self, request, f):
        error = self._enter()
        if error is not None:
            return pb.Result(error=error)
        for x in (request.a, request.b):
            if math.isnan(x) or math.isinf(x):
                return pb.Result(error=pb.Error(code=pb.ERROR_CODE_INVALID_INPUT,
                                                message=f"operand {x} is not finite"))
        return f(request.a, request.b)

    def Initialize(self, request, context):
        unknown = sorted(set(request.config) - {"greeting"})
        with self.lock:
            if unknown:
                self.state = pb.PLUGIN_STATE_ERROR
                return pb.Outcome(error=pb.Error(code=pb.ERROR_CODE_INVALID_INPUT,
                                                 message=f"unknown config key `{unknown[0]}`"))
            self.state = pb.PLUGIN_STATE_READY
            self.started = time.time_ns()
        log("INFO", f"initialized with {len(request.config)} keys")
        return pb.Outcome()

    def Shutdown(self, request, context):
        with self.lock:
            self.state = pb.PLUGIN_STATE_CLOSED
        log("WARN", "shut down")
        return pb.Outcome()

    def GetStatus(self, request, context):
        with self.lock:
            uptime = time.time_ns() - self.started if self.started else 0
            return pb.StatusResponse(state=self.state, message="py-calc",
                                     started_at_unix_nanos=self.started, uptime_nanos=uptime,
                                     request_count=self.requests)

    def GetMetadata(self, request, context):
        return pb.MetadataResponse(
            name="py-calc", version="0.3.0", description="a Calculator written in Python",
            operations=["add", "subtract", "multiply", "divide"],
            config=[pb.ConfigKey(key="greeting", description="ignored")],
            interface_version="1.0.0")

    def Add(self, request, context):
        return self._compute(request, lambda a, b: pb.Result(value=a + b))

    def Subtract(self, request, context):
        return self._compute(request, lambda a, b: pb.Result(value=a - b))

    def Multiply(self, request, context):
        return self._compute(request, lambda a, b: pb.Result(value=a * b))

    def Divide(self, request, context):
        def divide(a, b):
            if b == 0:
                return pb.Result(error=pb.Error(code=pb.ERROR_CODE_DIVISION_BY_ZERO,
                                                message=f"py-calc cannot divide {a:g} by zero"))
            return pb.Result(value=a / b)
        return self._compute(request, divide)

    def ProcessBatch(self, request, context):
        calls = {1: self.Add, 2: self.Subtract, 3: self.Multiply, 4: self.Divide}
        results = []
        for item in request.items:
            call = calls.get(item.op)
            if call is None:
                results.append(pb.BatchItemResult(code=pb.ERROR_CODE_UNSUPPORTED))
                continue
            result = call(pb.Operands(a=item.a, b=item.b), context)
            results.append(pb.BatchItemResult(value=result.value, code=result.error.code))
        return pb.BatchResponse(results=results)


class Controller(go_plugin_pb2_grpc.GRPCControllerServicer):
    def __init__(self, stop):
        self.stop = stop

    def Shutdown(self, request, context):
        log("INFO", "the host asked the plugin to shut down")
        self.stop.set()
        return go_plugin_pb2.Empty()


def main():
    if os.environ.get(COOKIE_KEY) != sys.argv[2]:
        print("This binary is a plugin. These are not meant to be executed directly.",
              file=sys.stderr)
        sys.exit(1)
    offered = os.environ.get("PLUGIN_PROTOCOL_VERSIONS", "1").split(",")
    if "1" not in offered:
        log("WARN", f"the host offers protocol versions {offered}, this plugin speaks 1")
    directory = os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or tempfile.gettempdir()
    socket = os.path.join(directory, f"py-calc-{os.getpid()}.sock")

    stop = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_CalculatorServicer_to_server(Calculator(), server)
    go_plugin_pb2_grpc.add_GRPCControllerServicer_to_server(Controller(stop), server)
    checker = health.HealthServicer()
    checker.set("plugin", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port("unix:" + socket)
    server.start()
    log("DEBUG", f"serving on {socket}")
    print(f"1|1|unix|{socket}|grpc|", flush=True)
    stop.wait()
    server.stop(grace=1)


if __name__ == "__main__":
    main()
