"""How ``taskledger serve --park-ms`` changes create and GET at 32 clients: servers with each
setting, measured in turns (A, B, A, B, ...) so that noise on the machine hits both alike, with
the median of each. What the default of ``--park-ms`` was chosen from.

    python -m scripts.bench_park

(about a minute: 3 rounds of 4 s per route and setting; change the constants below to vary it).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from scripts import bench

ROUNDS = 3
SECONDS = 4.0
CLIENTS = 32
PARKS = (50.0, 0.0)


def main() -> None:
    parks = list(PARKS)
    rates: dict[tuple[float, str], list[float]] = {}
    for round_ in range(ROUNDS):
        for park in parks if round_ % 2 == 0 else list(reversed(parks)):
            work = Path(tempfile.mkdtemp(prefix="taskledger-park-"))
            rows, _ = bench.http_taskledger(
                SECONDS,
                [CLIENTS],
                work,
                serve_args=("--park-ms", str(park)),
                create_and_get_only=True,
            )
            for row in rows:
                rates.setdefault((park, row["route"]), []).append(row["rps"])
                print(f"round {round_ + 1}: park {park:g} ms {row['route']}: {row['rps']} req/s")
    print(f"\nmedian req/s at {CLIENTS} clients over {ROUNDS} rounds:")
    for (park, route), values in sorted(rates.items()):
        print(f"  --park-ms {park:g}  {route:7} {statistics.median(values):8.1f}")


if __name__ == "__main__":
    main()
