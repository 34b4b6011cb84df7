"""Checks that payvisor's public contract is annotated the AIP way.

Reads the contract as `buf build` writes it (an image, read as a
FileDescriptorSet) and fails, listing every gap, unless:
- every PaymentService method has an HTTP binding (`google.api.http`), so a
  REST transcoder can serve it;
- every field of every request message says how it behaves
  (`google.api.field_behavior`: REQUIRED, OPTIONAL, ...), and every
  `name`, `parent` and `after_event` field of one names its resource type
  (`google.api.resource_reference`);
- the resources (Payment, Account, PaymentEvent) are declared
  (`google.api.resource`, with their type and pattern), their `name` is
  IDENTIFIER and every other field says how it behaves;
- every type a resource reference names is declared;
- the vendored Google protos in proto/google/{api,rpc} are the files of the
  googleapis-common-protos package installed beside this script.

Usage: aip_annotations.py IMAGE REPO_ROOT
"""

import os
import sys

from google.api import annotations_pb2, field_behavior_pb2, resource_pb2
from google.protobuf import descriptor_pb2

PACKAGE = "payvisor.v1"
SERVICE = "PaymentService"
RESOURCES = {"Payment", "Account", "PaymentEvent"}
VENDORED = [
    ("api", "annotations.proto"),
    ("api", "http.proto"),
    ("api", "field_behavior.proto"),
    ("api", "resource.proto"),
    # For reflection only: the error details tools decode.
    ("rpc", "status.proto"),
    ("rpc", "error_details.proto"),
]


def main():
    image, root = sys.argv[1], sys.argv[2]
    files = descriptor_pb2.FileDescriptorSet()
    with open(image, "rb") as handle:
        files.ParseFromString(handle.read())
    ours = [f for f in files.file if f.package == PACKAGE and f.name.endswith("payments.proto")]
    if len(ours) != 1:
        sys.exit(f"payments.proto not found in {image}")
    contract = ours[0]
    gaps = []

    for service in contract.service:
        if service.name != SERVICE:
            continue
        for method in service.method:
            rule = method.options.Extensions[annotations_pb2.http]
            if not rule.WhichOneof("pattern"):
                gaps.append(f"{SERVICE}.{method.name}: no google.api.http binding")

    declared = set()
    for message in contract.message_type:
        resource = message.options.Extensions[resource_pb2.resource]
        if resource.type:
            declared.add(resource.type)
        if message.name in RESOURCES:
            if not resource.type or not resource.pattern:
                gaps.append(f"{message.name}: no google.api.resource with type and pattern")
            for field in message.field:
                behaviors = list(field.options.Extensions[field_behavior_pb2.field_behavior])
                if field.name == "name":
                    if field_behavior_pb2.IDENTIFIER not in behaviors:
                        gaps.append(f"{message.name}.name: not IDENTIFIER")
                elif not behaviors:
                    gaps.append(f"{message.name}.{field.name}: no field_behavior")

    references = []
    for message in contract.message_type:
        for field in message.field:
            reference = field.options.Extensions[resource_pb2.resource_reference]
            named = reference.type or reference.child_type
            if named:
                references.append((f"{message.name}.{field.name}", named))
            if not message.name.endswith("Request"):
                continue
            behaviors = list(field.options.Extensions[field_behavior_pb2.field_behavior])
            if not behaviors:
                gaps.append(f"{message.name}.{field.name}: no field_behavior")
            if field.name in ("name", "parent", "after_event") and not named:
                gaps.append(f"{message.name}.{field.name}: no resource_reference")
    for where, named in references:
        if named not in declared:
            gaps.append(f"{where}: references {named}, which no message declares")

    packages = os.path.dirname(os.path.dirname(annotations_pb2.__file__))
    for package, name in VENDORED:
        kept = os.path.join(root, "proto", "google", package, name)
        packaged = os.path.join(packages, package, name)
        with open(kept, "rb") as a, open(packaged, "rb") as b:
            if a.read() != b.read():
                gaps.append(f"proto/google/{package}/{name} differs from googleapis-common-protos'")

    if gaps:
        print("\n".join(gaps))
        sys.exit(1)
    methods = sum(len(s.method) for s in contract.service if s.name == SERVICE)
    print(f"AIP annotations: {methods} methods bound, resources {sorted(declared)}")


if __name__ == "__main__":
    main()
