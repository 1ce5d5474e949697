#!/usr/bin/env bash
# Installs what vitgpu needs on a fresh Debian/Ubuntu machine: a Vulkan loader and, where the
# machine has no GPU driver, Mesa's software Vulkan (lavapipe). Safe to run again.
set -euo pipefail
have_icd() { ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2>/dev/null | grep -q .; }
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' || ! have_icd; then
    if command -v apt-get >/dev/null; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq libvulkan1 mesa-vulkan-drivers >/dev/null
    else
        echo "install a Vulkan driver for your GPU (or Mesa's lavapipe) and the Vulkan loader" >&2
        exit 1
    fi
fi
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
