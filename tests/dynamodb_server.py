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

A second change, for speed only: before a TransactWriteItems moto
deep-copies every table it touches, so that it can restore them if a
condition fails. That copy costs what the whole table holds, so a test that
writes thousands of payments into its table made each write slower than the
last, and the crash test's replays timed out. A transaction of puts,
deletes and condition checks never changes an item in place (a put replaces
the item, a delete removes it), so copying the table's two levels of dicts
keeps the same snapshot at a fraction of the cost; a transaction with an
update still gets moto's full copy.

A third, for speed only: moto answers every Query, on the table or on an
index, by sorting the whole table and then filtering it, so a query cost
what the table holds, and the watchdog's sweep (a few dozen index queries a
second) kept the single-threaded server busy. Here a table query reads only
its partition, and an index query only the items whose index partition key
matches, from a map kept up to date on every put and delete. moto's own
code still does the rest (ordering, conditions, paging, projection), so the
answers are the ones it gave before.

Two additions make it a fault-injecting DynamoDB, for the tests that check
payvisor under store faults (the server itself carries no test tools):

- ClientRequestToken is honoured as DynamoDB documents it (moto ignores
  it): a TransactWriteItems that succeeded, sent again with the same token
  and the same items, succeeds again without applying anything; with other
  items it is refused (IdempotentParameterMismatchException). Without this,
  a retry of a write whose answer was lost would fail its own conditions,
  which real DynamoDB never does.
- Faults per table, switched on by a test: `POST /payvisor/faults` with
  {"table": T, "seed": N, "throttled": p, "failed": p,
  "applied_then_failed": p, "slow": p, "applied_then_late": p,
  "stalled_for_s": s}. Each request that names T draws one outcome:
  throttled (ThrottlingException, nothing applied), failed (500
  InternalServerError, nothing applied), applied then failed (applied, but
  answered 500, the ambiguous case DynamoDB documents), slow (50-500 ms
  before it is served), applied then late (applied, answered `late_s`
  later, 5.5 s by default: past payvisor's default attempt timeout, so the
  client retries a write that landed; drawn on a read, it is no fault). `stalled_for_s` holds every request
  for T that long from now (a store that stops answering).
  `GET /payvisor/faults?table=T` answers how many of each were injected,
  and under "writes" how many of those hit a write. A plan with every
  probability 0 switches faults off.

Usage: python dynamodb_server.py PORT
"""

import collections
import copy
import hashlib
import io
import json
import random
import sys
import threading
import time
from urllib.parse import parse_qs
from collections import defaultdict

from werkzeug.serving import run_simple

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
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


def read_body(environ):
    """The request body, put back so that the next layer reads it too."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def operation(environ):
    return (environ.get("HTTP_X_AMZ_TARGET") or "").rpartition(".")[2]


def json_response(start_response, status, document):
    body = json.dumps(document).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]


def dynamodb_error(start_response, status, kind, message):
    return json_response(
        start_response,
        status,
        {"__type": f"com.amazonaws.dynamodb.v20120810#{kind}", "message": message},
    )


class RequestTokens:
    """ClientRequestToken of TransactWriteItems, as DynamoDB honours it for
    ten minutes. Inside the one-at-a-time lock, so a retry waits for the
    attempt it repeats."""

    LIFETIME_S = 600

    def __init__(self, app):
        self.app = app
        self.succeeded = {}  # token -> digest of the items
        # (when, token), oldest first: expiry pops from the front, so each
        # request costs O(1) however many tokens a long test run leaves.
        self.expiry = collections.deque()

    def __call__(self, environ, start_response):
        if operation(environ) != "TransactWriteItems":
            return self.app(environ, start_response)
        request = json.loads(read_body(environ) or b"{}")
        token = request.get("ClientRequestToken")
        if token is None:
            return self.app(environ, start_response)
        digest = hashlib.sha256(
            json.dumps(request.get("TransactItems"), sort_keys=True).encode()
        ).hexdigest()
        now = time.monotonic()
        while self.expiry and now - self.expiry[0][0] >= self.LIFETIME_S:
            self.succeeded.pop(self.expiry.popleft()[1], None)
        if token in self.succeeded:
            if self.succeeded[token] != digest:
                return dynamodb_error(
                    start_response,
                    "400 Bad Request",
                    "IdempotentParameterMismatchException",
                    "The request uses the same client token as a previous, but non-identical request.",
                )
            return json_response(start_response, "200 OK", {})
        answered = []

        def recording_start_response(status, headers, *rest):
            answered.append(status)
            return start_response(status, headers, *rest)

        body = list(self.app(environ, recording_start_response))
        if answered and answered[0].startswith("200"):
            self.succeeded[token] = digest
            self.expiry.append((now, token))
        return body


WRITES = {"TransactWriteItems", "PutItem", "DeleteItem", "UpdateItem", "BatchWriteItem"}

FAULT_KINDS = ("throttled", "failed", "applied_then_failed", "slow", "applied_then_late")


class FaultPlan:
    def __init__(self, document):
        self.random = random.Random(document.get("seed", 0))
        self.odds = {kind: float(document.get(kind, 0)) for kind in FAULT_KINDS}
        self.stalled_until = time.monotonic() + float(document.get("stalled_for_s", 0))
        self.late_s = float(document.get("late_s", 5.5))
        self.injected = {kind: 0 for kind in FAULT_KINDS + ("stalled",)}
        self.injected["writes"] = {kind: 0 for kind in FAULT_KINDS}

    def draw(self):
        roll = self.random.random()
        for kind in FAULT_KINDS:
            if roll < self.odds[kind]:
                return kind
            roll -= self.odds[kind]
        return None


def tables_named(request):
    names = set()
    if "TableName" in request:
        names.add(request["TableName"])
    for item in request.get("TransactItems", []):
        for action in item.values():
            if isinstance(action, dict) and "TableName" in action:
                names.add(action["TableName"])
    return names


class Faults:
    """Outermost layer: decides a request's fault before it queues for the
    lock, so that slow, late and stalled answers hold only their own
    connection."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.plans = {}
        self.ended = {}  # table -> what its plan injected, once switched off

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/payvisor/faults":
            return self.control(environ, start_response)
        if not self.plans:
            return self.app(environ, start_response)
        try:
            request = json.loads(read_body(environ) or b"{}")
        except ValueError:
            return self.app(environ, start_response)
        with self.lock:
            plan = next(
                (self.plans[t] for t in sorted(tables_named(request)) if t in self.plans),
                None,
            )
            if plan is None:
                return self.app(environ, start_response)
            kind = plan.draw()
            if kind == "applied_then_late" and operation(environ) not in WRITES:
                # A late read is only slow: spend the delay where it matters.
                kind = None
            stall = plan.stalled_until - time.monotonic()
            if stall > 0:
                plan.injected["stalled"] += 1
            if kind is not None:
                plan.injected[kind] += 1
                if operation(environ) in WRITES:
                    plan.injected["writes"][kind] += 1
            delay = plan.random.uniform(0.05, 0.5)
            late = plan.late_s
        if stall > 0:
            time.sleep(stall)
        if kind == "throttled":
            return dynamodb_error(
                start_response,
                "400 Bad Request",
                "ThrottlingException",
                "Rate of requests exceeds the allowed throughput.",
            )
        if kind == "failed":
            return dynamodb_error(
                start_response, "500 Internal Server Error", "InternalServerError", "Internal server error"
            )
        if kind == "slow":
            time.sleep(delay)
        if kind == "applied_then_failed":
            list(self.app(environ, lambda *args: None))
            return dynamodb_error(
                start_response, "500 Internal Server Error", "InternalServerError", "Internal server error"
            )
        if kind == "applied_then_late":
            answered = []
            body = list(self.app(environ, lambda *args: answered.append(args)))
            time.sleep(late)
            start_response(*answered[0])
            return body
        return self.app(environ, start_response)

    def control(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            document = json.loads(read_body(environ))
            with self.lock:
                plan = FaultPlan(document)
                ended = self.plans.pop(document["table"], None)
                if ended is not None:
                    self.ended[document["table"]] = ended.injected
                if any(plan.odds.values()) or document.get("stalled_for_s"):
                    self.plans[document["table"]] = plan
            return json_response(start_response, "200 OK", {})
        table = parse_qs(environ.get("QUERY_STRING", "")).get("table", [""])[0]
        with self.lock:
            plan = self.plans.get(table)
            injected = copy.deepcopy(plan.injected if plan else self.ended.get(table, {}))
        return json_response(start_response, "200 OK", injected)


def snapshot_of_items(table, memo):
    """A copy of `table` whose item dicts are its own and whose items are
    shared: enough to restore it after puts, deletes and condition checks."""
    snapshot = copy.copy(table)
    snapshot.items = defaultdict(dict)
    for hash_key, value in table.items.items():
        snapshot.items[hash_key] = dict(value) if isinstance(value, dict) else value
    partitions = table.__dict__.get("index_partitions")
    if partitions is not None:
        snapshot.index_partitions = partitions.copy()
    return snapshot


full_copy_transaction = DynamoDBBackend.transact_write_items


def transact_write_items(self, transact_items):
    if any("Update" in item for item in transact_items):
        return full_copy_transaction(self, transact_items)
    # Safe to switch per call: requests are served one at a time.
    Table.__deepcopy__ = snapshot_of_items
    try:
        return full_copy_transaction(self, transact_items)
    finally:
        del Table.__deepcopy__


DynamoDBBackend.transact_write_items = transact_write_items


class IndexPartitions:
    """A table's items by the value of each index's partition-key attribute:
    {(attribute, value): {(hash key, range key): item}}."""

    def __init__(self, table):
        self.attributes = sorted(
            {
                key["AttributeName"]
                for index in table.all_indexes()
                for key in index.schema
                if key["KeyType"] == "HASH"
            }
        )
        self.members = {}
        for item in moto_all_items(table):
            self.add(item)

    def copy(self):
        copied = copy.copy(self)
        copied.members = {at: dict(items) for at, items in self.members.items()}
        return copied

    def add(self, item):
        for attribute in self.attributes:
            value = item.attrs.get(attribute)
            if value is not None:
                self.members.setdefault((attribute, value), {})[
                    (item.hash_key, item.range_key)
                ] = item

    def remove(self, item):
        for attribute in self.attributes:
            value = item.attrs.get(attribute)
            if value is not None:
                partition = self.members.get((attribute, value), {})
                partition.pop((item.hash_key, item.range_key), None)

    def items(self, attribute, value):
        return list(self.members.get((attribute, value), {}).values())


moto_all_items = Table.all_items
moto_put_item = Table.put_item
moto_delete_item = Table.delete_item
moto_update_item = DynamoDBBackend.update_item
moto_query = Table.query


def put_item(self, item_attrs, *args, **kwargs):
    partitions = self.__dict__.get("index_partitions")
    if partitions is not None:
        hash_key = DynamoType(item_attrs[self.hash_key_attr])
        range_key = (
            DynamoType(item_attrs[self.range_key_attr]) if self.range_key_attr else None
        )
        replaced = self.get_item(hash_key, range_key)
    item = moto_put_item(self, item_attrs, *args, **kwargs)
    if partitions is not None:
        if replaced is not None:
            partitions.remove(replaced)
        partitions.add(item)
    return item


def delete_item(self, *args, **kwargs):
    item = moto_delete_item(self, *args, **kwargs)
    partitions = self.__dict__.get("index_partitions")
    if partitions is not None and item is not None:
        partitions.remove(item)
    return item


def update_item(self, table_name, *args, **kwargs):
    # Updates change items in place: forget the map, rebuild it when needed.
    if table_name in self.tables:
        self.tables[table_name].__dict__.pop("index_partitions", None)
    return moto_update_item(self, table_name, *args, **kwargs)


def query(self, *args, **kwargs):
    hash_key = args[0] if args else kwargs.get("hash_key")
    index_name = args[7] if len(args) > 7 else kwargs.get("index_name")
    conditions = kwargs.get("hash_key_conditions") or []
    if index_name is None and hash_key is not None:
        partition = self.items.get(hash_key)
        if partition is None:
            candidates = []
        elif self.range_key_attr:
            candidates = list(partition.values())
        else:
            candidates = [partition]
    elif index_name is not None and len(conditions) == 1:
        partitions = self.__dict__.get("index_partitions")
        if partitions is None:
            partitions = self.index_partitions = IndexPartitions(self)
        attribute, value = conditions[0]
        if attribute not in partitions.attributes:
            return moto_query(self, *args, **kwargs)
        candidates = partitions.items(attribute, value)
    else:
        return moto_query(self, *args, **kwargs)
    self.all_items = lambda: candidates
    try:
        return moto_query(self, *args, **kwargs)
    finally:
        del self.all_items


Table.put_item = put_item
Table.delete_item = delete_item
DynamoDBBackend.update_item = update_item
Table.query = query


def main():
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        "127.0.0.1",
        port,
        Faults(OneRequestAtATime(RequestTokens(app))),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


main()
