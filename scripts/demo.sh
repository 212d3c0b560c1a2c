#!/usr/bin/env bash
# The README's main command. Installs what is missing, builds, and runs the
# end-to-end demo. Until the demo lands (issue: host-device link), it runs
# what exists: the Gaussian head benchmark at the real feature size.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
cargo bench --locked -p gaussedge-shared --bench head -- "$@"
