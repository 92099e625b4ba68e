"""ClickHouse's HTTP interface, as far as abx's warehouse client uses it, over chdb: the
current ClickHouse engine embedded in a Python package (PyPI `chdb-core`). It lets the
warehouse tests run against today's ClickHouse as well as the Debian 18.16 server
(scripts/test-warehouse-current.sh, issue 30), so the SQL is known to work on the versions
users run.

    python chdb_http.py PORT DATA_DIR     # PORT 0: any free port, printed once listening

What the client sends (origin/pipeline/src/clickhouse.rs, `post`): a POST whose body is the
statement, or whose `query` parameter is an INSERT's statement and whose body is its rows;
the other parameters are settings. A statement that fails answers 500 with ClickHouse's
message, as the server does. One session serves every request in turn (chdb is not made
for concurrent queries), which the tests' handful of connections does not notice.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from chdb import session

# Parameters the client sends that are not settings of a query.
NOT_SETTINGS = {"query", "database", "wait_end_of_query"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    chdb: session.Session
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        # The server's health answer (`/ping`, `/`).
        self.answer(200, "Ok.\n")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        parameters = dict(parse_qsl(urlsplit(self.path).query))
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode()
        statement = f"{parameters['query']}\n{body}" if "query" in parameters else body
        settings = [(k, v) for k, v in parameters.items() if k not in NOT_SETTINGS]
        try:
            with self.lock:
                # Session settings rather than a SETTINGS clause, which after a CREATE TABLE
                # would be the table's.
                for name, value in settings:
                    self.chdb.query(f"SET {name} = {value}")
                result = self.chdb.query(statement, "TabSeparated")
        except Exception as error:  # chdb raises its own error type with the server's message
            self.answer(500, f"{error}\n")
            return
        self.answer(200, str(result) if result is not None else "")


def main() -> None:
    port, data = int(sys.argv[1]), sys.argv[2]
    Handler.chdb = session.Session(data)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    version = str(Handler.chdb.query("SELECT version()", "TabSeparated")).strip()
    print(f"ClickHouse {version} (chdb)", flush=True)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
