#!/usr/bin/env bash
# Audit the hash-pinned lock (requirements.lock) for known vulnerabilities with pip-audit
# (PyPI advisory data). pip-audit is a tool, not a project dependency: it lives in its own
# virtual environment (.venv-audit), pinned here.
#
#   scripts/audit.sh                     # `make audit`: any failure, unreachable data included, fails
#   scripts/audit.sh --skip-unreachable  # CI: when the advisory data cannot be reached, say so, exit 0
#
# A finding (pip-audit reports known vulnerabilities) always fails.
set -uo pipefail
cd "$(dirname "$0")/.."

PIP_AUDIT_VERSION=2.10.1
AUDIT_VENV=${AUDIT_VENV:-.venv-audit}
TIMEOUT_S=${AUDIT_TIMEOUT_S:-120}
SKIP_UNREACHABLE=0
[ "${1:-}" = "--skip-unreachable" ] && SKIP_UNREACHABLE=1
SKIP_MSG="pip-audit: vulnerability data unreachable from this machine; skipped (run \`make audit\` where it is reachable)"

unreachable() {
  echo "pip-audit: $1" >&2
  if [ "$SKIP_UNREACHABLE" = 1 ]; then
    echo "$SKIP_MSG"
    exit 0
  fi
  echo "pip-audit: vulnerability data unreachable; audit NOT done" >&2
  exit 2
}

if [ ! -x "$AUDIT_VENV/bin/pip-audit" ] \
    || ! "$AUDIT_VENV/bin/pip-audit" --version 2>/dev/null | grep -q " $PIP_AUDIT_VERSION\$"; then
  python3 -m venv "$AUDIT_VENV" || exit 1
  if ! timeout "$TIMEOUT_S" "$AUDIT_VENV/bin/python" -m pip install -q --disable-pip-version-check \
      "pip-audit==$PIP_AUDIT_VERSION" >/tmp/nominal-pip-audit-install.log 2>&1; then
    unreachable "could not install pip-audit $PIP_AUDIT_VERSION (see /tmp/nominal-pip-audit-install.log)"
  fi
fi

log=$(mktemp)
timeout "$TIMEOUT_S" "$AUDIT_VENV/bin/pip-audit" -r requirements.lock --require-hashes \
  --disable-pip --progress-spinner off --timeout 15 >"$log" 2>&1
rc=$?
if [ "$rc" = 0 ]; then
  # PyPI's simple index can answer while its JSON API (the advisory data) does not, e.g. behind
  # a package mirror: pip-audit then skips each package ("could not be audited") and exits 0.
  skipped=$(grep -c "could not be audited" "$log")
  total=$(grep -Ec '^[A-Za-z0-9][A-Za-z0-9._-]*==' requirements.lock)
  [ "$skipped" = "$total" ] || cat "$log"
  rm -f "$log"
  if [ "$skipped" -gt 0 ]; then
    unreachable "$skipped of $total locked packages could not be audited (no advisory data)"
  fi
  echo "pip-audit: $total locked packages audited, no known vulnerabilities"
  exit 0
fi
cat "$log"
if grep -Eq "Found [0-9]+ known vulnerabilit" "$log"; then
  rm -f "$log"
  echo "pip-audit: known vulnerabilities in requirements.lock (above)" >&2
  exit 1
fi
if [ "$rc" = 124 ] || grep -Eqi "ConnectionError|Max retries exceeded|Name or service not known|Temporary failure in name resolution|timed out|Network is unreachable|Connection refused|ProxyError|SSLError" "$log"; then
  rm -f "$log"
  unreachable "advisory service did not answer (exit $rc)"
fi
rm -f "$log"
echo "pip-audit: failed (exit $rc, above)" >&2
exit "$rc"
