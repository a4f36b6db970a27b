#!/usr/bin/env bash
# The example job end to end on a fresh machine: install what the image needs, build kiln and
# its busybox image, then run examples/hello/job.toml on kiln's built-in defaults (no API key).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash .ci/setup
cargo build --release --locked
./target/release/kiln image build --missing busybox
exec ./target/release/kiln run examples/hello/job.toml "$@"
