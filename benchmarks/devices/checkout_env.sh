# Sourced by the device scripts (run from the repository root): edgeds, its exporter and the
# benchmarks from this checkout, with nothing installed. The exporter is the package
# edgeds_export (pyproject maps it to export/), so a link of that name stands in for the install.
# Usage: source benchmarks/devices/checkout_env.sh [DIR ...]   (DIRs go first on PYTHONPATH)
mkdir -p /tmp/alias && ln -sfn "$PWD/export" /tmp/alias/edgeds_export
PYTHONPATH=$(IFS=:; echo "$*")${*:+:}/tmp/alias:$PWD
export PYTHONPATH PYTHONUNBUFFERED=1
