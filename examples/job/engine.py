#!/usr/bin/env python3
"""The example's inference engine: loads the model folder the host
downloaded, serves it on loopback, and says READY once it listens.

GET /health -> 200 "ok"; GET /v1/model -> the model's config, its weight
count, and the arguments the engine was started with (engine_kwargs).
"""

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser(allow_abbrev=False)
parser.add_argument("--model-dir", required=True)
parser.add_argument("--port", type=int, required=True)
args, extra = parser.parse_known_args()
kwargs = dict(a[2:].split("=", 1) for a in extra if a.startswith("--") and "=" in a)

with open(os.path.join(args.model_dir, "config.json")) as f:
    config = json.load(f)
weights_path = os.path.join(args.model_dir, "weights.json")
weights = 0
if os.path.exists(weights_path):
    with open(weights_path) as f:
        weights = sum(len(row) for row in json.load(f)["embed"])


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"ok"
        elif self.path == "/v1/model":
            body = json.dumps({"config": config, "weights": weights, "kwargs": kwargs}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
print(f"READY model={config['model_type']} weights={weights} port={args.port}", flush=True)
server.serve_forever()
