"""A PNG chart of move downtime against database size, warm vs cold, from `bench/warm_moves.py`'s JSON lines.

    .venv/bin/python bench/warm_moves.py --sizes 1,50,500 | tee var/bench/warm_moves.jsonl
    .venv/bin/python bench/move_chart.py var/bench/warm_moves.jsonl [--output docs/move-downtime.png]

Every `evacuate_downtime_s` line is one point (its p50, with its max as the bar's top); lines from several runs
may be concatenated. Points are drawn where they were measured, nothing is interpolated between runs."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def points(lines: list[str]) -> dict[str, list[tuple[float, float, float]]]:
    """(size MB, p50 s, max s) per strategy, sorted by size."""
    found: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        figure = json.loads(line)
        if figure.get("metric") == "evacuate_downtime_s":
            found[figure["strategy"]].append((float(figure["size_mb"]), float(figure["p50"]), float(figure["max"])))
    return {strategy: sorted(measured) for strategy, measured in found.items()}


def draw(measured: dict[str, list[tuple[float, float, float]]], output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.2), dpi=120)
    for strategy, style in (("cold", "s--"), ("warm", "o-")):
        if strategy not in measured:
            continue
        sizes, p50, top = zip(*measured[strategy], strict=True)
        axes.plot(sizes, p50, style, label=f"{strategy} (p50)")
        axes.vlines(sizes, p50, top, alpha=0.4)
        for size, value in zip(sizes, p50, strict=True):
            axes.annotate(f"{value:.1f} s", (size, value), textcoords="offset points", xytext=(6, -12), fontsize=8)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("database size (MB)")
    axes.set_ylabel("downtime per agent (s): stop -> new generation ready")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("figures", type=Path, nargs="+", help="files of bench/warm_moves.py output")
    parser.add_argument("--output", type=Path, default=Path("docs/move-downtime.png"))
    parser.add_argument("--title", default="litefleet evacuation downtime: warm (follower) vs cold (stop, restore)")
    args = parser.parse_args()
    lines = [line for path in args.figures for line in path.read_text().splitlines()]
    measured = points(lines)
    if not measured:
        raise SystemExit("move_chart: no evacuate_downtime_s lines in the input")
    draw(measured, args.output, args.title)
    print(json.dumps({"chart": str(args.output), "points": {k: len(v) for k, v in measured.items()}}))


if __name__ == "__main__":
    main()
