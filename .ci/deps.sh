#!/bin/sh
# Install the Debian packages doneshot needs to build and test (run as root or with sudo).
set -e
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config libopenmpi-dev openmpi-bin libcjson-dev zlib1g-dev \
    libopenblas-dev liblapacke-dev libpcre2-dev libutf8proc-dev mandoc python3 python3-venv \
    clang libclang-rt-dev llvm \
    slurmctld slurmd slurm-client munge iproute2 >/dev/null
