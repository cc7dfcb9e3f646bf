"""The CRS regression tests, one pytest test per YAML test, run through ftw's TestRunner.

ftw's pytest plugin parametrizes `test` from --ruledir_recurse. Every stage is sent to
--crs-target instead of the address written in the YAML file; the checks are ftw's own, with
the failing check named in the assertion message.
"""

import re

from ftw import testrunner

ID_RE = re.compile(r'\[id "(\d+)"\]')


def _ids(lines):
    return sorted({m for line in lines for m in ID_RE.findall(line)})


class Runner(testrunner.TestRunner):
    def test_log(self, lines, log_contains, negate):
        try:
            super().test_log(lines, log_contains, negate)
        except AssertionError:
            kind = "no_log_contains" if negate else "log_contains"
            raise AssertionError(
                "%s %r failed; rules logged: %s" % (kind, log_contains.pattern, " ".join(_ids(lines)) or "-")
            ) from None

    def test_status(self, expected_status, actual_status):
        try:
            super().test_status(expected_status, actual_status)
        except AssertionError:
            raise AssertionError("status %r expected, got %r" % (expected_status, actual_status)) from None


def test_crs(test, logchecker_obj, crs_target):
    runner = Runner()
    for stage in test.stages:
        stage.input.dest_addr, stage.input.port = crs_target
        runner.run_stage(stage, logchecker_obj)
