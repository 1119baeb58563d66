#!/usr/bin/env bash
# The whole suite. Called by `make test` (which has built .venv). In CI (CI=true) the suite runs
# twice: SQLite + the embedded redis-server, then PostgreSQL + the Redis service, and a missing
# browser is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" REFLEX_USE_NPM=1

ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  echo "== installing Debian's chromium for the browser tests"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } >/tmp/observatory-apt.log 2>&1; then
    echo "could not install chromium (see /tmp/observatory-apt.log); browser tests will fail" >&2
  fi
}
ensure_chromium

run_suite() {
  echo "== pytest ($1)"
  shift
  env "$@" python -m pytest -q -p no:cacheprovider
}

status=0
run_suite "SQLite, embedded redis-server" TEST_DATABASE_URL= TEST_REDIS_URL= || status=$?
if [ "${CI:-}" = "true" ] || [ -n "${TEST_DATABASE_URL:-}" ]; then
  run_suite "PostgreSQL" \
    TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}" \
    TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}" || status=$?
fi
exit $status
