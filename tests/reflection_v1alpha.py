"""A gRPC tool that knows payvisor only through server reflection v1alpha.

Python's grpcio-reflection speaks only v1alpha, as grpcurl before 1.8.8,
Postman and Evans do. Given a server's address, this lists its services,
loads the descriptors of PaymentService and Health from reflection alone
(no proto files), and calls CreatePayment, GetPayment and Health.Check
with messages built from them. It then makes a refused call and decodes
the error's details (google.rpc.Status and the ErrorInfo and BadRequest
in it) with descriptors from reflection too, as grpcurl and GUIs do. It
prints one JSON object with what it saw and exits non-zero if anything is
missing or a call fails.

Usage: reflection_v1alpha.py HOST:PORT
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def call(channel, pool, service, method, fields):
    """Calls service/method with a request built from its descriptor."""
    descriptor = pool.FindServiceByName(service).FindMethodByName(method)
    request_class = message_factory.GetMessageClass(descriptor.input_type)
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    request = request_class()
    for name, value in fields.items():
        if isinstance(value, dict):
            getattr(request, name).CopyFrom(build(getattr(request, name), value))
        else:
            setattr(request, name, value)
    stub = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    return stub(request, timeout=10)


def build(message, fields):
    """Fills a nested message from a dict."""
    for name, value in fields.items():
        if isinstance(value, dict):
            build(getattr(message, name), value)
        else:
            setattr(message, name, value)
    return message


def refused_details(channel, pool):
    """A create with a bad currency: its status details, decoded with the
    google.rpc descriptors reflection serves."""
    try:
        call(
            channel,
            pool,
            "payvisor.v1.PaymentService",
            "CreatePayment",
            {
                "parent": "accounts/acme",
                "request_id": "reflection-v1alpha-bad",
                "payment": {"amount": {"currency_code": "XYZ", "minor_units": 1}},
            },
        )
    except grpc.RpcError as error:
        trailers = dict(error.trailing_metadata() or ())
        status_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("google.rpc.Status")
        )
        status = status_class.FromString(trailers["grpc-status-details-bin"])
        details = {}
        for detail in status.details:
            name = detail.type_url.rsplit("/", 1)[-1]
            detail_class = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
            decoded = detail_class.FromString(detail.value)
            if name == "google.rpc.ErrorInfo":
                details[name] = {"reason": decoded.reason, "domain": decoded.domain}
            elif name == "google.rpc.BadRequest":
                details[name] = [v.field for v in decoded.field_violations]
            else:
                details[name] = str(decoded)
        return {"code": error.code().name, "details": details}
    return {}


def main():
    address = sys.argv[1]
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        created = call(
            channel,
            pool,
            "payvisor.v1.PaymentService",
            "CreatePayment",
            {
                "parent": "accounts/acme",
                "request_id": "reflection-v1alpha-1",
                "payment": {"amount": {"currency_code": "USD", "minor_units": 1250}},
            },
        )
        fetched = call(
            channel, pool, "payvisor.v1.PaymentService", "GetPayment", {"name": created.name}
        )
        health = call(channel, pool, "grpc.health.v1.Health", "Check", {"service": ""})
        health_status = pool.FindEnumTypeByName(
            "grpc.health.v1.HealthCheckResponse.ServingStatus"
        ).values_by_number[health.status].name
        refused = refused_details(channel, pool)
    seen = {
        "services": services,
        "created": created.name,
        "fetched": fetched.name,
        "amount": fetched.amount.minor_units,
        "health": health_status,
        "refused": refused,
    }
    print(json.dumps(seen))
    wanted = {"payvisor.v1.PaymentService", "grpc.health.v1.Health"}
    ok = (
        wanted <= set(services)
        and created.name.startswith("accounts/acme/payments/")
        and fetched.name == created.name
        and fetched.amount.minor_units == 1250
        and health_status == "SERVING"
        and refused.get("code") == "INVALID_ARGUMENT"
        and "google.rpc.ErrorInfo" in refused.get("details", {})
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
