#!/usr/bin/env bash
# Install what tests/test_web_demo.py needs to test `otseg serve` in a real browser:
#   - gradio (the web extra) and Playwright's Python package (pip), when missing; Playwright drives the system's
#     Chromium through executable_path (no `playwright install` browser download);
#   - Debian's Chromium and a font (apt), when no Chromium is on PATH yet.
# Best effort: where a step cannot run (no apt, not root and no password-less sudo, no network), it says so and
# goes on; it always exits 0, and the browser tests then skip with a message saying what is missing.
# Usage (from anywhere): bash scripts/install_browser_deps.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "install_browser_deps: $*"; }

# Only what is missing, and not otseg itself: installing it here could pull an unpinned torch.
# (The gradio pin is the web extra's, in pyproject.toml.)
missing=()
python -c "import gradio" 2>/dev/null || missing+=("gradio>=6.0")
python -c "import playwright.sync_api" 2>/dev/null || missing+=("playwright>=1.40")
if [ "${#missing[@]}" -gt 0 ] && ! python -m pip install --quiet "${missing[@]}"; then
    say "pip could not install ${missing[*]}; the web demo tests will skip"
fi

chromium_bin() { command -v chromium || command -v chromium-browser || command -v google-chrome || true; }

if [ -z "$(chromium_bin)" ]; then
    if [ "$(id -u)" = 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        SUDO=(false)
        say "not root and no password-less sudo: cannot apt-get install chromium"
    fi
    if [ "${SUDO[0]:-}" != false ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt_install() { "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-liberation; }
        # A fresh machine may have no package lists yet: update only when the first try fails.
        apt_install >/dev/null 2>&1 || { "${SUDO[@]}" apt-get update -qq && apt_install >/dev/null; } ||
            say "apt-get could not install chromium"
    elif ! command -v apt-get >/dev/null 2>&1; then
        say "no apt-get here: install Chromium yourself (or set OTSEG_CHROMIUM=/path/to/chrome)"
    fi
fi

bin="$(chromium_bin)"
if [ -n "$bin" ]; then
    say "browser: $("$bin" --version 2>/dev/null | head -n 1) ($bin)"
else
    say "no Chromium available: the browser tests in tests/test_web_demo.py will skip"
fi
python - <<'EOF' 2>/dev/null || true
from importlib.metadata import version
for name in ("gradio", "playwright"):
    try:
        print(f"install_browser_deps: {name} {version(name)}")
    except Exception:
        print(f"install_browser_deps: {name} not installed")
EOF
exit 0
