#!/usr/bin/env bash
# The whole test suite from a clean checkout: Debian packages (as root), the venv, then pytest.
# The real peers (PostgreSQL, SeaweedFS, Orthanc, dcmtk) are started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/install-debian.sh
infra/venv.sh test
mkdir -p test-artifacts
exec .venv/bin/python -m pytest --cov --cov-report=term:skip-covered -p no:cacheprovider "$@"
