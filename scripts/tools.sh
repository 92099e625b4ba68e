# Sourced by scripts/test.sh and .ci/run: installs what the build and tests need, once per
# machine. CLI tools go into a cache outside the clone, keyed by version, so that later runs
# (and CI on the same machine) reuse them.

ABX_TOOLS="${ABX_TOOLS:-$HOME/.cache/abx-tools}"
mkdir -p "$ABX_TOOLS"

# Each heading carries the seconds since the outermost script started (the scripts call one
# another as new processes, so the start is passed on in the environment): a slow run's log
# then shows which step took the time.
export ABX_RUN_START="${ABX_RUN_START:-$(date +%s)}"
log() { printf '\n== [%5ss] %s\n' "$(( $(date +%s) - ABX_RUN_START ))" "$*" >&2; }

# ensure_cargo_tool CRATE VERSION [BINARY] [extra cargo install flags...]
# Puts the tool's bin directory on PATH, installing it first if needed.
ensure_cargo_tool() {
  local crate=$1 version=$2 binary=${3:-$1}
  shift 3 || shift $#
  local root="$ABX_TOOLS/$crate-$version"
  if [ ! -x "$root/bin/$binary" ]; then
    log "installing $crate $version into $root"
    cargo install "$crate" --version "$version" --root "$root" "$@"
  fi
  export PATH="$root/bin:$PATH"
}

# The workspace's executables in target/debug (abx-origin, abx-wasmtime-host, abx-load),
# built with the dependency features that `cargo test --workspace` unifies. After
# scripts/test.sh's workspace tests this compiles the executables and nothing else: built on
# its own, `cargo build -p abx-origin` would resolve features for that package alone (serde,
# hashbrown, getrandom… with fewer of them) and compile most of the dependency graph, wasmtime
# and sqlx included, a second time. (So a script run on its own builds the workspace's tests
# too: `--tests` is what makes the features match.)
build_workspace_executables() {
  log "the workspace's executables (with the features of the workspace's tests)"
  cargo build --workspace --bins --tests --locked
}

# Sets `bench` to true for the one optional argument `--bench`, to false without one; any
# other argument ends the script with its usage.
parse_bench_flag() {
  bench=false
  case "${1:-}" in
    "") ;;
    --bench) bench=true ;;
    *) echo "usage: $0 [--bench]" >&2; exit 2 ;;
  esac
}

ensure_rust_targets() {
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
}

have_nightly() {
  rustup toolchain list 2>/dev/null | grep -q '^nightly'
}

apt_install() {
  log "installing Debian packages: $*"
  if [ -z "${ABX_APT_UPDATED:-}" ]; then
    apt-get update -qq
    export ABX_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# `npm ci` in a package folder, repeated only when its package-lock.json changes.
ensure_npm_packages() {
  local dir=$1 lock_hash
  lock_hash=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$dir/node_modules/.abx-lock-hash" 2>/dev/null)" != "$lock_hash" ]; then
    log "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_hash" >"$dir/node_modules/.abx-lock-hash"
  fi
}

# A Python venv in the tool cache with a pinned requirements file installed, keyed by the
# file's hash; prints its path.
ensure_python_venv() {
  local requirements=$1 hash venv
  hash=$(sha256sum "$requirements" | cut -c1-16)
  venv="$ABX_TOOLS/python-venv-$hash"
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    log "creating $venv from $requirements"
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" >&2 || return 1
    touch "$venv/.complete"
  fi
  echo "$venv"
}

# The venv of python/requirements-dev.txt with the checkout's `abx` package installed by
# `pip install ./python` (as the README says; built by the venv's maturin, so without a
# download, into the workspace's target directory). Prints the venv's path.
ensure_python_package() {
  local venv
  venv=$(ensure_python_venv python/requirements-dev.txt) || return 1
  log "pip install ./python into $venv"
  # The venv's bin goes on PATH because the build backend runs `maturin` by name. Errors
  # are returned explicitly: callers run this in a command substitution, where `set -e`
  # does not apply.
  PATH="$venv/bin:$PATH" "$venv/bin/pip" install -q --disable-pip-version-check \
    --no-build-isolation --force-reinstall --no-deps ./python >&2 || return 1
  echo "$venv"
}

# Debian's Chromium (and ChromeDriver) for the browser tests. Returns 1 when it is missing
# and cannot be installed; with ABX_REQUIRE_ALL set that ends the run instead.
ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1; then
    apt_install chromium chromium-driver || true
  fi
  if command -v chromium >/dev/null 2>&1; then
    return 0
  fi
  if [ -n "${ABX_REQUIRE_ALL:-}" ]; then
    echo "Chromium is required (ABX_REQUIRE_ALL=1) but could not be installed" >&2
    exit 1
  fi
  return 1
}

# PostgreSQL on 127.0.0.1:5432 for the storage tests: started if stopped, installed from
# Debian's packages (with trusted loopback access, as on these machines) if absent.
ensure_postgres() {
  export ABX_TEST_POSTGRES_URL="${ABX_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    return
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
    local conf
    conf=$(ls -d /etc/postgresql/*/main | head -n 1)
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf/pg_hba.conf"
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return
    sleep 1
  done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
  return 1
}

# NATS with JetStream on 127.0.0.1:4222 for the distributed event log's tests: started if
# nothing listens there, installed from Debian's packages if absent. Its store lives in the
# tool cache, outside the clone.
ensure_nats() {
  export ABX_TEST_NATS_URL="${ABX_TEST_NATS_URL:-nats://127.0.0.1:4222}"
  if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    return
  fi
  command -v nats-server >/dev/null 2>&1 || apt_install nats-server
  log "starting nats-server with JetStream on 127.0.0.1:4222"
  mkdir -p "$ABX_TOOLS/nats"
  setsid nats-server -a 127.0.0.1 -p 4222 -js -sd "$ABX_TOOLS/nats" -l "$ABX_TOOLS/nats/server.log" </dev/null >/dev/null 2>&1 &
  for _ in $(seq 1 30); do
    (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && return
    sleep 1
  done
  echo "nats-server did not come up on 127.0.0.1:4222" >&2
  return 1
}

# ClickHouse on 127.0.0.1:8123 (HTTP) for the warehouse's tests: started if nothing listens
# there, installed from Debian's packages (18.16) if absent. It runs as this user in the
# foreground of its own session, with its data in the tool cache, outside the clone.
ensure_clickhouse() {
  export ABX_TEST_CLICKHOUSE_URL="${ABX_TEST_CLICKHOUSE_URL:-http://127.0.0.1:8123}"
  if (exec 3<>/dev/tcp/127.0.0.1/8123) 2>/dev/null; then
    return
  fi
  command -v clickhouse-server >/dev/null 2>&1 || apt_install clickhouse-server
  log "starting clickhouse-server on 127.0.0.1:8123"
  local home="$ABX_TOOLS/clickhouse"
  mkdir -p "$home/data" "$home/tmp" "$home/user_files" "$home/format_schemas"
  setsid clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
    --path="$home/data/" --tmp_path="$home/tmp/" --user_files_path="$home/user_files/" \
    --format_schema_path="$home/format_schemas/" --listen_host=127.0.0.1 \
    --http_port=8123 --tcp_port=9000 --interserver_http_port=9009 \
    --logger.log="$home/server.log" --logger.errorlog="$home/error.log" \
    </dev/null >"$home/stdout.log" 2>&1 &
  for _ in $(seq 1 60); do
    [ "$(curl -s http://127.0.0.1:8123/ping 2>/dev/null)" = "Ok." ] && return
    sleep 1
  done
  echo "clickhouse-server did not come up on 127.0.0.1:8123 (see $home/error.log)" >&2
  return 1
}

# Drops databases left behind by test runs that were killed midway.
drop_stale_test_databases() {
  psql "$ABX_TEST_POSTGRES_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'abx_t_%'" 2>/dev/null |
    while read -r name; do psql "$ABX_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)" || true; done
  if [ -n "${ABX_TEST_CLICKHOUSE_URL:-}" ]; then
    curl -s "$ABX_TEST_CLICKHOUSE_URL" --data-binary "SELECT name FROM system.databases WHERE name LIKE 'abx\\_t\\_%'" 2>/dev/null |
      while read -r name; do curl -s "$ABX_TEST_CLICKHOUSE_URL" --data-binary "DROP DATABASE IF EXISTS $name" || true; done
  fi
}
