#!/usr/bin/env bash
# Installs ds3's build and test dependencies from Debian's packages. Idempotent:
# it does nothing when every package is already present.
set -euo pipefail

pkgs=(
  build-essential cmake ccache pkg-config
  libcli11-dev catch2 libxxhash-dev nlohmann-json3-dev libpcre2-dev
  libomp-dev clang libclang-rt-14-dev
  libvulkan-dev glslc mesa-vulkan-drivers vulkan-tools
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "[install-deps] all ${#pkgs[@]} packages present"
  exit 0
fi

echo "[install-deps] installing: ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
