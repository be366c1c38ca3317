#!/usr/bin/env bash
# Builds the release `mesh` binary you deploy: the Swift runtime and Foundation linked in (one
# file to copy, nothing to install on the host but glibc 2.36+, libstdc++ and zlib), every
# function in a section of its own so that the link can pack the code a sidecar runs together
# (see `releaseLink` in Package.swift). Prints the binary's path on its last line.
#
# It builds in .build-deploy/, apart from `swift build`'s .build/: the flags differ, and the
# compiler keeps an object file whose code is unchanged even when only such flags changed.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAGS=(-c release --scratch-path .build-deploy --static-swift-stdlib
       -Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections)
BIN="$(swift build "${FLAGS[@]}" --show-bin-path)/mesh"
# The link's inputs include Sources/mesh/symbol-order.txt, which the build system does not
# track: removing the binary makes it link again (a few seconds) with the current list.
rm -f "$BIN"
swift build "${FLAGS[@]}" --product mesh >&2
echo "$BIN"
