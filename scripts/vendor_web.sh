#!/usr/bin/env bash
# Refreshes the dashboard's vendored front-end libraries from their npm packages
# (web/static/vendor/VENDOR.md lists them). Needs npm and the npm registry; nothing else does.
set -euo pipefail
HTMX_VERSION=2.0.11
ECHARTS_VERSION=6.1.0
out="$(cd "$(dirname "$0")/.." && pwd)/web/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "htmx.org@$HTMX_VERSION" "echarts@$ECHARTS_VERSION" >/dev/null
mkdir htmx echarts
tar xzf "htmx.org-$HTMX_VERSION.tgz" -C htmx
tar xzf "echarts-$ECHARTS_VERSION.tgz" -C echarts
cp htmx/package/dist/htmx.min.js "$out/htmx.min.js"
cp htmx/package/LICENSE "$out/htmx.LICENSE"
cp echarts/package/dist/echarts.min.js "$out/echarts.min.js"
cp echarts/package/LICENSE "$out/echarts.LICENSE"
cp echarts/package/NOTICE "$out/echarts.NOTICE"
cd "$out" && sha256sum htmx.min.js echarts.min.js
