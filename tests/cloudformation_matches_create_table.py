"""The CloudFormation template and `payvisor dynamodb create-table` must
define the same table. Deploys the template to the DynamoDB-API test server's
CloudFormation API, creates a second table with the CLI, and compares what
DynamoDB reports of both (keys, attributes, indexes, billing).

Run by tests/run.sh with AWS_ENDPOINT_URL_DYNAMODB pointing at moto."""

import os
import re
import subprocess
import sys

import boto3

ENDPOINT = os.environ["AWS_ENDPOINT_URL_DYNAMODB"]
REGION = os.environ.get("AWS_REGION", "us-east-1")
TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "deploy", "cloudformation", "payvisor-table.yaml")
BINARY = sys.argv[1]


def shape(description):
    table = description["Table"]
    return {
        "keys": sorted((k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]),
        "attributes": sorted((a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]),
        "indexes": sorted(
            (
                index["IndexName"],
                tuple(sorted((k["AttributeName"], k["KeyType"]) for k in index["KeySchema"])),
                index["Projection"]["ProjectionType"],
            )
            for index in table.get("GlobalSecondaryIndexes", [])
        ),
        "billing": table.get("BillingModeSummary", {}).get("BillingMode"),
    }


def protected_shape(dynamodb, table):
    """The table's shape, and how it is protected: deletion protection and
    point-in-time recovery (the way back from damaged or deleted records)."""
    described = shape(dynamodb.describe_table(TableName=table))
    described["deletion_protection"] = dynamodb.describe_table(TableName=table)["Table"].get(
        "DeletionProtectionEnabled", False
    )
    backups = dynamodb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
    described["point_in_time_recovery"] = backups["PointInTimeRecoveryDescription"][
        "PointInTimeRecoveryStatus"
    ]
    ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    described["time_to_live"] = (ttl.get("TimeToLiveStatus"), ttl.get("AttributeName"))
    return described


def main():
    suffix = str(os.getpid())
    cloudformation = boto3.client("cloudformation", endpoint_url=ENDPOINT, region_name=REGION)
    dynamodb = boto3.client("dynamodb", endpoint_url=ENDPOINT, region_name=REGION)
    with open(TEMPLATE) as template:
        cloudformation.create_stack(
            StackName=f"payvisor-{suffix}",
            TemplateBody=template.read(),
            Parameters=[{"ParameterKey": "TableName", "ParameterValue": f"from-template-{suffix}"}],
        )
    subprocess.run([BINARY, "dynamodb", "create-table", "--table", f"from-cli-{suffix}"], check=True)
    # Idempotent: a second run succeeds and changes nothing.
    subprocess.run([BINARY, "dynamodb", "create-table", "--table", f"from-cli-{suffix}"], check=True)
    from_template = protected_shape(dynamodb, f"from-template-{suffix}")
    # moto's CloudFormation does not apply PointInTimeRecoverySpecification
    # (its table reports DISABLED whatever the template says): read the
    # template's own declaration instead.
    with open(TEMPLATE) as template:
        declared = "PointInTimeRecoveryEnabled: true" in template.read()
    from_template["point_in_time_recovery"] = "ENABLED" if declared else "DISABLED"
    # Nor TimeToLiveSpecification: read its declaration too.
    with open(TEMPLATE) as template:
        ttl = re.search(
            r"TimeToLiveSpecification:\s*\n\s*AttributeName:\s*(\S+)\s*\n\s*Enabled:\s*true",
            template.read(),
        )
    from_template["time_to_live"] = ("ENABLED", ttl.group(1)) if ttl else ("DISABLED", None)
    from_cli = protected_shape(dynamodb, f"from-cli-{suffix}")
    if from_template != from_cli:
        print(f"template: {from_template}\ncli:      {from_cli}")
        print("0 passed, 1 failed")
        sys.exit(1)
    print("cloudformation template matches create-table")
    print("1 passed, 0 failed")


main()
