#!/usr/bin/env python3
"""Judges one kosoku (Autobahn|TestSuite) run of scripts/autobahn.

usage: autobahn-verdict.py PASS_NAME INDEX_JSON [REPORT_DIR]

Every case must be OK, NON-STRICT, INFORMATIONAL or UNIMPLEMENTED, with a
closing handshake that is OK or INFORMATIONAL, except the cases listed
below for the pass, each with the documented limit that makes it fail.
With REPORT_DIR (the run's per-case reports), two more reasons are read
from a case's own report: a compression case (12.*, 13.*) whose messages
are larger than the pass's message limit, closed with 1009; and a case
that kosoku itself could not run (its Python 3 port of those case files
hashes a str: "Strings must be encoded before hashing"), which judges
the harness, not the server.
Prints a summary; exits 1 if any case fails for another reason.
"""

import collections
import fnmatch
import json
import os
import re
import sys

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}
PASSING_CLOSE = {"OK", "INFORMATIONAL"}

TOO_BIG = (
    "its message is larger than limits.max_message_bytes (64 KiB, "
    "config/tickwire.toml): the server closes with 1009, as documented"
)

# pass name -> [(case glob, reason, close code the server must have sent, or None)]
LIMITED = {
    "default-limits": [
        ("9.1.[2-6]", TOO_BIG, 1009),
        ("9.2.[2-6]", TOO_BIG, 1009),
        ("9.3.*", TOO_BIG, 1009),
        ("9.4.*", TOO_BIG, 1009),
        ("9.5.*", TOO_BIG, 1009),
        ("9.6.*", TOO_BIG, 1009),
    ],
    # Every case of group 9 must pass once the message limit is raised.
    "large-messages": [],
}


def case_key(case_id):
    return tuple(int(p) for p in case_id.split("."))


HARNESS_ERROR = "Strings must be encoded before hashing"
HARNESS = (
    "kosoku could not run the case (its Python 3 port hashes a str: "
    f'"{HARNESS_ERROR}"): a harness error, not a verdict on the server'
)
# The message limit of each pass, for the compression cases' payload sizes.
MESSAGE_LIMIT = {"default-limits": 64 * 1024, "large-messages": 16 * 1024 * 1024}


def from_report(report_dir, name, r):
    """A reason read from the case's own report, or None."""
    if not report_dir or not r.get("reportfile"):
        return None
    path = os.path.join(report_dir, r["reportfile"])
    if not os.path.exists(path):
        return None
    with open(path) as f:
        report = json.load(f)
    if r["behavior"] == "ERROR" and report.get("result") == HARNESS_ERROR:
        return HARNESS
    size = re.search(r"payload size (\d+)", report.get("description", ""))
    limit = MESSAGE_LIMIT.get(name)
    if size and limit and int(size.group(1)) >= limit and r.get("remoteCloseCode") == 1009:
        return TOO_BIG.replace("64 KiB", f"{limit // 1024} KiB") + " (its messages, compressed or not)"
    return None


def main():
    name, path = sys.argv[1], sys.argv[2]
    report_dir = sys.argv[3] if len(sys.argv) > 3 else None
    with open(path) as f:
        index = json.load(f)
    cases = {}
    for agent_cases in index.values():
        cases.update(agent_cases)
    limited = LIMITED.get(name, [])
    counts = collections.Counter()
    allowed, unexpected = [], []
    for case_id in sorted(cases, key=case_key):
        r = cases[case_id]
        counts[r["behavior"]] += 1
        if r["behavior"] in PASSING and r["behaviorClose"] in PASSING_CLOSE:
            continue
        line = f"{case_id}: {r['behavior']} / close {r['behaviorClose']}, server close code {r.get('remoteCloseCode')}"
        why = next(
            (
                (reason, code)
                for glob, reason, code in limited
                if fnmatch.fnmatchcase(case_id, glob)
            ),
            None,
        )
        if why and (why[1] is None or r.get("remoteCloseCode") == why[1]):
            allowed.append((line, why[0]))
        elif (reason := from_report(report_dir, name, r)) is not None:
            allowed.append((line, reason))
        else:
            unexpected.append(line)

    print(f"pass {name}: {len(cases)} cases: " + ", ".join(f"{n} {b}" for b, n in sorted(counts.items())))
    if allowed:
        print(f"{len(allowed)} fail only because of a documented limit:")
        for reason in dict.fromkeys(r for _, r in allowed):
            ids = [l.split(":")[0] for l, r in allowed if r == reason]
            print(f"  {', '.join(ids)}: {reason}")
    if unexpected:
        print(f"{len(unexpected)} FAIL for no documented reason:")
        for line in unexpected:
            print(f"  {line}")
        return 1
    print("verdict: every other case passes or is informational")
    return 0


if __name__ == "__main__":
    sys.exit(main())
