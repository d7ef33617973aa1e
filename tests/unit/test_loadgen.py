"""retrain/loadgen.py against a real HTTP server on 127.0.0.1 (the standard library's)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from retrain.loadgen import Answer, LoadGenerator, LoadStats


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the handler closes

    def do_POST(self) -> None:  # the standard library names it
        server: _Server = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with server.lock:
            server.count += 1
            n = server.count
            server.connections[self.client_address] += 1
            server.bodies.append(body)
            server.headers.append(dict(self.headers))
        status = 500 if server.fail_every and n % server.fail_every == 0 else 200
        answer = json.dumps({"n": n}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.send_header("x-model-version", str(1 + n % 2))
        self.send_header("x-request-id", f"req-{n}")
        self.end_headers()
        self.wfile.write(answer)
        if server.close_every and n % server.close_every == 0:
            # closes the idle connection without saying so (no "connection: close"), as a
            # server's keep-alive timeout does
            self.close_connection = True

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *, fail_every: int = 0, close_every: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fail_every, self.close_every = fail_every, close_every
        self.lock = threading.Lock()
        self.count = 0
        self.connections: Counter = Counter()
        self.bodies: list = []
        self.headers: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/invocations"


@pytest.fixture
def server():
    servers: list[_Server] = []

    def start(**kwargs) -> _Server:
        s = _Server(**kwargs)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _run_until(load: LoadGenerator, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(load.snapshot()) < count:
        assert time.monotonic() < deadline, f"only {len(load.snapshot())} of {count} answers"
        time.sleep(0.01)


def test_every_request_is_recorded_with_its_start_latency_status_and_version(server):
    s = server(fail_every=5)
    body = {"dataframe_records": [{"x": 1}]}
    before = time.monotonic()
    with LoadGenerator(s.url, body, threads=2, pause_s=0.0,
                       headers={"x-user": "u1"}) as load:
        _run_until(load, 40)
    after = time.monotonic()
    answers = load.answers
    assert len(answers) == s.count >= 40  # one record per request the server saw
    assert all(isinstance(a, Answer) for a in answers)
    assert all(before <= a.started <= a.started + a.seconds <= after for a in answers)
    assert all(a.seconds > 0 for a in answers)
    by_id = {a.request_id: a for a in answers}
    assert set(by_id) == {f"req-{n}" for n in range(1, s.count + 1)}
    for n in range(1, s.count + 1):
        a = by_id[f"req-{n}"]
        assert a.version == str(1 + n % 2)  # the header, on failures too
        assert a.status == (500 if n % 5 == 0 else 200) and a.ok == (n % 5 != 0)
        assert a.error is None
    assert all(b == body for b in s.bodies)
    assert all(h["x-user"] == "u1" and h["content-type"] == "application/json"
               for h in s.headers)
    assert [a.request_id for a in load.failures()] == [
        a.request_id for a in answers if a.status == 500]


def test_stats_are_the_totals_of_the_records(server):
    s = server(fail_every=4)
    with LoadGenerator(s.url, {"a": 1}, threads=1, pause_s=0.0) as load:
        _run_until(load, 20)
    stats = load.stop()
    answers = load.answers
    ok = [a for a in answers if a.status == 200]
    assert stats.total == len(answers) and stats.ok == len(ok)
    assert stats.failed == len(answers) - len(ok) > 0
    assert stats.errors == Counter({"HTTP 500": stats.failed})
    assert stats.versions == Counter(a.version for a in ok)
    assert stats.latencies == [a.seconds for a in ok]
    assert LoadStats.of([]).total == 0


def test_after_selects_by_start_time(server):
    s = server()
    with LoadGenerator(s.url, {}, threads=1, pause_s=0.0) as load:
        _run_until(load, 10)
        mark = time.monotonic()
        _run_until(load, len(load.snapshot()) + 10)
    later = load.after(mark)
    assert later and all(a.started > mark for a in later)
    assert len(later) + sum(a.started <= mark for a in load.answers) == len(load.answers)


def test_in_flight_selects_the_requests_sent_and_not_yet_answered_at_a_moment():
    load = LoadGenerator("http://127.0.0.1:9/", {}, threads=1)  # never started
    load.answers = [Answer(10.0, 1.0, 200), Answer(10.5, 0.2, 200), Answer(11.5, 1.0, 0),
                    Answer(12.0, 0.5, 200), Answer(9.0, 0.5, 200)]
    assert load.answers[0].finished == 11.0
    assert load.in_flight(10.6) == load.answers[:2]
    assert load.in_flight(11.0) == load.answers[:1]  # answered at that very moment
    assert load.in_flight(11.2) == []
    # a span: everything in flight at some moment of it
    assert load.in_flight(11.2, 12.0) == load.answers[2:4]
    assert load.in_flight(8.0, 9.2) == load.answers[4:]


def test_next_body_gives_each_request_its_own_body(server):
    s = server()
    lock, counter = threading.Lock(), iter(range(10**6))

    def next_body():
        with lock:
            return {"n": next(counter)}

    with LoadGenerator(s.url, {"n": -1}, threads=2, pause_s=0.0, next_body=next_body) as load:
        _run_until(load, 30)
    sent = sorted(b["n"] for b in s.bodies)
    assert len(sent) == len(set(sent)) >= 30 and -1 not in sent


def test_each_thread_keeps_one_connection(server):
    s = server()
    with LoadGenerator(s.url, {}, threads=2, pause_s=0.0) as load:
        _run_until(load, 60)
    assert len(s.connections) <= 2, s.connections  # keep-alive, not a connection a request
    assert not load.failures()


def test_a_connection_the_server_closed_while_idle_is_reopened_not_failed(server):
    s = server(close_every=3)
    with LoadGenerator(s.url, {}, threads=1, pause_s=0.02) as load:
        _run_until(load, 15)
    assert not load.failures(), load.failures()
    assert len(s.connections) >= 5  # the server did close them


def test_no_server_gives_status_zero_and_the_error_name():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with LoadGenerator(f"http://127.0.0.1:{port}/x", {}, threads=1, pause_s=0.01) as load:
        _run_until(load, 3)
    answers = load.answers
    assert all(a.status == 0 and not a.ok and a.version is None for a in answers)
    assert {a.error for a in answers} == {"ConnectionRefusedError"}
    assert load.stats.errors == Counter({"ConnectionRefusedError": len(answers)})


def test_max_seconds_ends_the_load_on_its_own(server):
    s = server()
    load = LoadGenerator(s.url, {}, threads=2, pause_s=0.0, max_seconds=0.3)
    started = time.monotonic()
    with load:
        for thread in load._threads:
            thread.join(10)
    assert time.monotonic() - started < 5
    done = len(load.answers)
    assert done > 0
    time.sleep(0.2)
    assert len(load.answers) == done  # nothing after the deadline


@pytest.mark.parametrize(("url", "threads", "message"), [
    ("127.0.0.1:8000/invocations", 1, "expected an http"),
    ("ftp://127.0.0.1/x", 1, "expected an http"),
    ("http://127.0.0.1:8000/x", 0, "threads=0"),
])
def test_bad_arguments_are_refused_up_front(url, threads, message):
    with pytest.raises(ValueError, match=message):
        LoadGenerator(url, {}, threads=threads)
