"""The DynamoDB-API server the tests run against: moto's server, with one
change — requests are served one at a time.

Why: moto applies TransactWriteItems by snapshotting the whole table,
applying the actions, and restoring the snapshot if any condition fails. Its
stock server is threaded, so a failed transaction can restore a snapshot
taken before another, concurrent transaction committed, silently erasing
that commit. Real DynamoDB never does this. Serialising requests makes
moto's transactions atomic and isolated, as DynamoDB's are. (Connections
are still served by threads, so keep-alive clients do not block each other
between requests.)

Usage: python dynamodb_server.py PORT
"""

import sys
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


class OneRequestAtATime:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            # Materialise the body inside the lock: moto does its work lazily.
            return list(self.app(environ, start_response))


def main():
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        "127.0.0.1",
        port,
        OneRequestAtATime(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


main()
