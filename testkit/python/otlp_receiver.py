"""An OTLP/HTTP trace receiver for the tests: decodes each export with the
OpenTelemetry project's own protobuf definitions (`opentelemetry-proto`)
and writes one JSON line per span to OUT:
{"service", "pid", "trace_id", "span_id", "parent_span_id", "name"}.

usage: otlp_receiver.py PORT_FILE OUT
It listens on a free loopback port and writes that port to PORT_FILE.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

port_file, out_path = sys.argv[1], sys.argv[2]


def attribute(attrs, key):
    for a in attrs:
        if a.key == key:
            v = a.value
            return v.string_value or v.int_value
    return None


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        req = ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except Exception as e:  # a body that is not an OTLP export
            self.send_error(400, str(e))
            return
        with open(out_path, "a") as out:
            for rs in req.resource_spans:
                service = attribute(rs.resource.attributes, "service.name")
                pid = attribute(rs.resource.attributes, "process.pid")
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.write(json.dumps({
                            "service": service,
                            "pid": pid,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "name": s.name,
                        }) + "\n")
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Receiver)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
