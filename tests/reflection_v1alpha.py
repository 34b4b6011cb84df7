"""A gRPC tool that knows payvisor only through server reflection v1alpha.

Python's grpcio-reflection speaks only v1alpha, as grpcurl before 1.8.8,
Postman and Evans do. Given a server's address, this lists its services,
loads the descriptors of PaymentService and Health from reflection alone
(no proto files), and calls CreatePayment, GetPayment and Health.Check
with messages built from them. It prints one JSON object with what it saw
and exits non-zero if anything is missing or a call fails.

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
    seen = {
        "services": services,
        "created": created.name,
        "fetched": fetched.name,
        "amount": fetched.amount.minor_units,
        "health": health_status,
    }
    print(json.dumps(seen))
    wanted = {"payvisor.v1.PaymentService", "grpc.health.v1.Health"}
    ok = (
        wanted <= set(services)
        and created.name.startswith("accounts/acme/payments/")
        and fetched.name == created.name
        and fetched.amount.minor_units == 1250
        and health_status == "SERVING"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
