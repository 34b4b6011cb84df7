"""A merchant's webhook receiver for payvisor's tests: an implementation of
signature checking independent of payvisor's own (Python's hmac module).

Every POST must carry `Payvisor-Signature: t=<unix>,v1=<hex>` where hex is
HMAC-SHA256(secret, "<t>.<body>"), with t within --tolerance seconds of now,
and `Payvisor-Event-Id` equal to the body's "id". Accepted events are
appended to --log as JSON lines and answered 200; anything else is appended
to --rejected and answered 400.

Usage: webhook_receiver.py --port N --secret S --log FILE --rejected FILE
"""
import argparse
import hashlib
import hmac
import json
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def verify(secret: bytes, header: str, body: bytes, tolerance: int) -> str:
    """Returns "" if the signature is valid, else why not."""
    fields = {}
    for part in header.split(","):
        key, _, value = part.partition("=")
        fields.setdefault(key.strip(), []).append(value.strip())
    if "t" not in fields or "v1" not in fields:
        return "missing t or v1"
    try:
        timestamp = int(fields["t"][0])
    except ValueError:
        return "t is not a number"
    if abs(time.time() - timestamp) > tolerance:
        return "timestamp outside the tolerance (replay?)"
    expected = hmac.new(
        secret, str(timestamp).encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    if not any(hmac.compare_digest(expected, given) for given in fields["v1"]):
        return "signature mismatch"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--rejected", required=True)
    parser.add_argument("--tolerance", type=int, default=300)
    args = parser.parse_args()
    secret = args.secret.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            why = verify(
                secret, self.headers.get("Payvisor-Signature", ""), body, args.tolerance
            )
            event = {}
            if not why:
                try:
                    event = json.loads(body)
                except ValueError:
                    why = "body is not JSON"
            if not why and event.get("id") != self.headers.get("Payvisor-Event-Id"):
                why = "Payvisor-Event-Id differs from the body's id"
            if why:
                with open(args.rejected, "a") as out:
                    out.write(json.dumps({"why": why}) + "\n")
                self.send_response(400)
                self.end_headers()
                self.wfile.write(why.encode())
                return
            with open(args.log, "a") as out:
                out.write(
                    json.dumps(
                        {
                            "id": event["id"],
                            "type": event["type"],
                            "payment": event["event"]["payment"],
                            # int64 is a string in the JSON mapping.
                            "sequence": int(event["sequence"]),
                            "event_state": event["event"]["state"],
                            # The payment as GetPayment returns it.
                            "payment_name": (event["payment"] or {}).get("name"),
                            "payment_state": (event["payment"] or {}).get("state"),
                            "metadata": (event["payment"] or {}).get("metadata"),
                            "fields": sorted(event),
                            "traceparent": self.headers.get("traceparent"),
                        }
                    )
                    + "\n"
                )
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args) -> None:
            pass

    # One request at a time: the log's order is the arrival order.
    server = HTTPServer(("127.0.0.1", args.port), Handler)
    print("receiver listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
