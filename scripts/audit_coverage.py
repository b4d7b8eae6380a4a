"""Reads pip-audit's JSON report and fails when the audit checked nothing.

pip-audit skips a package whose release it cannot look up, and passes: on a network that
reaches only a package mirror it skips every package and still reports "No known
vulnerabilities found". This makes such a run fail, and prints what was found and skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(report_path: str) -> int:
    path = Path(report_path)
    if not path.exists():
        print(f"audit: pip-audit wrote no report ({path}); see its output above", file=sys.stderr)
        return 2
    dependencies = json.loads(path.read_text())["dependencies"]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = [d for d in dependencies if not d.get("skip_reason")]
    found = [(d, v) for d in audited for v in d.get("vulns", [])]
    for dependency, vuln in found:
        fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed release"
        print(
            f"audit: {dependency['name']} {dependency['version']}: {vuln['id']} (fixed in {fixes})",
            file=sys.stderr,
        )
    if not audited:
        reason = skipped[0]["skip_reason"] if skipped else "the report lists no package"
        print(
            f"audit: FAILED: nothing was audited; all {len(skipped)} packages were skipped "
            f"(e.g. {reason}). The advisory data (PyPI's per-release JSON at pypi.org) is not "
            "reachable from here; run `make audit` where pypi.org is.",
            file=sys.stderr,
        )
        return 2
    print(
        f"audit: {len(audited)} of {len(dependencies)} packages audited, "
        f"{len(found)} known vulnerabilities",
        file=sys.stderr,
    )
    if skipped:
        names = ", ".join(d["name"] for d in skipped)
        print(f"audit: not audited (not known to the advisory service): {names}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
