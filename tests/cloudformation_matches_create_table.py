"""The CloudFormation template and `payvisor dynamodb create-table` must
define the same table. Deploys the template to the DynamoDB-API test server's
CloudFormation API, creates a second table with the CLI, and compares what
DynamoDB reports of both (keys, attributes, indexes, billing).

Run by tests/run.sh with AWS_ENDPOINT_URL_DYNAMODB pointing at moto."""

import os
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
    from_template = shape(dynamodb.describe_table(TableName=f"from-template-{suffix}"))
    from_cli = shape(dynamodb.describe_table(TableName=f"from-cli-{suffix}"))
    if from_template != from_cli:
        print(f"template: {from_template}\ncli:      {from_cli}")
        print("0 passed, 1 failed")
        sys.exit(1)
    print("cloudformation template matches create-table")
    print("1 passed, 0 failed")


main()
