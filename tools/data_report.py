"""Summarise a training run's data-QA files (also works while the run is going).

    python tools/data_report.py outputs/<run>/data_report            # -> outputs/<run>/data_report.{md,json}
    python tools/data_report.py outputs/<run>/data_report --out /tmp/qa

Prints the markdown report; exit 1 when the loader skipped samples or flagged a warning (usable in scripts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scail_lab.data.report import to_markdown, write_data_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report_dir", type=Path, help="the run's data_report/ folder (epoch*/rank*-worker*.json)")
    p.add_argument("--out", type=Path, default=None, help="where to write data_report.{md,json} (default: its parent)")
    args = p.parse_args(argv)
    try:
        report = write_data_report(args.report_dir, args.out or args.report_dir.parent)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(to_markdown(report), end="")
    return 1 if report["warnings"] else 0


if __name__ == "__main__":
    sys.exit(main())
