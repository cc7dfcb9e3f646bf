"""pytest plugin for the OWASP CRS regression suite run by ftw (tests/crs/run.sh).

ftw checks `log_contains` / `no_log_contains` with a LogChecker. This one delimits a stage's
log lines with two marker requests: each carries `X-CRS-Test: <unique token>`, which the
marker rule (tests/crs/crs-test.conf) writes to the WAF's log. The lines between the start
marker's line and the end marker's line are the stage's lines. Offsets are remembered, so the
log is read forward once, never searched backwards.

Options:
  --crs-log FILE          the log with one line per libmodsecurity message
  --crs-target HOST:PORT  where every request goes (the YAML files say 127.0.0.1:80)
  --crs-results FILE      JSON summary and failing tests, read by run.sh
"""

import itertools
import json
import os
import re
import time

import pytest
from ftw import http, logchecker
from ftw.ruleset import Input

MARKER_HEADER = "X-CRS-Test"
MARKER_TIMEOUT = float(os.environ.get("CRS_MARKER_TIMEOUT", "10"))


def pytest_addoption(parser):
    parser.addoption("--crs-log", action="store", required=True)
    parser.addoption("--crs-target", action="store", default="127.0.0.1:80")
    parser.addoption("--crs-results", action="store", default=None)


def _split_target(value):
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


@pytest.fixture(scope="session")
def crs_target(request):
    return _split_target(request.config.getoption("--crs-target"))


class MarkerLogChecker(logchecker.LogChecker):
    def __init__(self, path, target):
        super().__init__()
        self.path = path
        self.host, self.port = target
        self.seq = itertools.count()
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0
        self.start_offset = None
        self.lines = []

    def _send_marker(self, token):
        http.HttpUA().send_request(
            Input(
                dest_addr=self.host,
                port=self.port,
                headers={
                    "Host": "localhost",
                    "User-Agent": "CRS",
                    "Accept": "*/*",
                    MARKER_HEADER: token,
                },
                version="HTTP/1.0",
            )
        )

    def _await_marker(self, stage_id):
        """Sends a marker request; returns (the lines before the marker's line, the offset
        just after it)."""
        # Only characters that CRS 920274 (PL4, strict header bytes) allows, or the marker
        # request's own matches would land inside the stage's lines; the final "." keeps
        # "id.1." from being a substring of "id.12.".
        token = "%s.%d." % (stage_id, next(self.seq))
        # The marker rule's message is "X-CRS-Test <token>"; a CRS rule matching the header
        # itself would log "REQUEST_HEADERS:X-CRS-Test: <token>" instead.
        needle = ("%s %s" % (MARKER_HEADER, token)).encode()
        self._send_marker(token)
        deadline = time.monotonic() + MARKER_TIMEOUT
        before = []
        line_start = self.offset  # offset of the first byte not yet split into lines
        pending = b""
        while True:
            with open(self.path, "rb") as f:
                f.seek(line_start + len(pending))
                pending += f.read()
            while True:
                nl = pending.find(b"\n")
                if nl < 0:
                    break
                line, pending = pending[:nl], pending[nl + 1:]
                line_start += nl + 1
                if needle in line:
                    return before, line_start
                before.append(line.decode("utf-8", "replace"))
            if time.monotonic() > deadline:
                raise AssertionError(
                    "marker %r not found in %s within %ss" % (token, self.path, MARKER_TIMEOUT)
                )
            time.sleep(0.002)

    def mark_start(self, stage_id):
        _, self.offset = self._await_marker(stage_id)

    def mark_end(self, stage_id):
        self.lines, self.offset = self._await_marker(stage_id)

    def get_logs(self):
        return self.lines


@pytest.fixture(scope="session")
def logchecker_obj(request, crs_target):
    return MarkerLogChecker(request.config.getoption("--crs-log"), crs_target)


# --- results for run.sh -------------------------------------------------------------------

_results = {"passed": [], "failed": {}}


def pytest_runtest_logreport(report):
    name = report.nodeid.split("[", 1)[-1].rstrip("]")
    if report.failed:
        msg = ""
        if report.longrepr is not None:
            crash = getattr(report.longrepr, "reprcrash", None)
            msg = crash.message if crash is not None else str(report.longrepr)
        msg = re.sub(r"\s+", " ", msg.split("\nassert")[0]).strip()
        _results["failed"].setdefault(name, msg[:400])
    elif report.when == "call" and report.passed:
        _results["passed"].append(name)


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("--crs-results")
    if not path:
        return
    with open(path, "w") as f:
        json.dump(
            {
                "passed": len(_results["passed"]),
                "failed": len(_results["failed"]),
                "failures": _results["failed"],
            },
            f,
            indent=1,
        )
