"""`make bench`: run every benchmark; each prints one JSON line per figure."""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from benchmarks import telemetry_ingest

    return telemetry_ingest.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
