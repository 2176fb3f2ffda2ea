#!/bin/sh
# Frames/s through the netswitch core and port handles (64 and 1500 B) and
# TCP throughput between two host endpoints, in release mode on this host.
# Usage: bench/netswitch.sh [--quick]
set -eu
cd "$(dirname "$0")/.."
exec cargo bench -p netswitch --bench netswitch -- "$@"
