#!/usr/bin/env bash
# Builds the release `mesh` binary you deploy: the Swift runtime, Foundation and libstdc++ linked
# in (one file to copy, nothing to install on the host but glibc 2.36+ and zlib), every
# function in a section of its own so that the link can pack the code a sidecar runs together
# (see `releaseLink` in Package.swift). Prints the binary's path on its last line.
#
# The libraries' code (SwiftNIO, swift-nio-ssl, ...) is built without the run-time
# exclusivity checks (-enforce-exclusivity=unchecked), as Swift servers' release builds
# commonly are: every access to a class's stored property registered itself in a per-thread
# list, ~100 times a request inside SwiftNIO alone (callgrind: 56.9k -> 48.5k instructions a
# request through the outbound sidecar, 58.1k -> 50.5k inbound). SwiftMesh's own modules keep
# the checks (Package.swift adds them back after this flag), and the debug build that every
# test runs on checks everywhere. See ARCHITECTURE.md, "The release build".
#
# It builds in .build-deploy/, apart from `swift build`'s .build/: the flags differ, and the
# compiler keeps an object file whose code is unchanged even when only such flags changed.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAGS=(-c release --scratch-path .build-deploy --static-swift-stdlib
       -Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections
       -Xswiftc -enforce-exclusivity=unchecked)
BIN="$(swift build "${FLAGS[@]}" --show-bin-path)/mesh"
# libstdc++ linked in as well: a sidecar uses a few hundred KB of it (the Swift runtime, ICU and
# BoringSSL are C++), but the shared library kept 1.3 MB of its code resident, and linked in
# those functions take their place in the ordered code (1 MB less peak RSS per sidecar). The
# toolchain's link line asks for -lstdc++ ahead of anything a package can add; lld takes the
# first libstdc++ it finds on the library path, where the build's product directory comes
# before the compiler's, so the static archive is put there.
STDCXX=""
for driver in "$(dirname "$(readlink -f "$(command -v swift)")")/clang" clang g++ gcc; do
  if command -v "$driver" >/dev/null 2>&1; then
    STDCXX=$("$driver" -print-file-name=libstdc++.a 2>/dev/null || true)
    break
  fi
done
mkdir -p "$(dirname "$BIN")"
if [[ -f $STDCXX ]]; then
  ln -sf "$STDCXX" "$(dirname "$BIN")/libstdc++.a"
else
  rm -f "$(dirname "$BIN")/libstdc++.a"
  echo "build-release: no static libstdc++ found (Debian: apt-get install libstdc++-12-dev); mesh will need libstdc++.so.6 on the host" >&2
fi
# The link's inputs include Sources/mesh/symbol-order.txt, which the build system does not
# track: removing the binary makes it link again (a few seconds) with the current list.
rm -f "$BIN"
swift build "${FLAGS[@]}" --product mesh >&2
echo "$BIN"
