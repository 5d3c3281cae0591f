#!/usr/bin/env python3
"""Draws the scaling curve of BENCHMARKS.md (section "Scaling curve") as
docs/benchmarks-scaling.png.

The numbers are the medians of three `loadgen bench` runs each, copied from
the table in BENCHMARKS.md (one node, embedded mode, `--rate 0 --batch 10`,
2 publishers, 15 s). Update both together.

    pip install matplotlib
    python3 scripts/plot_benchmarks.py [output.png]
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# subscribers (over 100 symbols) -> (deliveries/s, server CPU µs/delivery, p99 ms)
BY_SUBSCRIBERS = {
    1_000: (370_551, 1.28, 4_415),
    5_000: (712_332, 0.84, 15_532),
    10_000: (386_284, 1.77, 24_527),
    19_000: (302_695, 2.22, 18_301),
}
# symbols (1 000 subscribers) -> (deliveries/s, server CPU µs/delivery, p99 ms)
BY_SYMBOLS = {
    10: (978_222, 0.42, 7_606),
    100: (370_551, 1.28, 4_415),
    1_000: (106_585, 7.98, 2_419),
}
# Targets of issue 4, for reference lines.
TARGET_DELIVERIES_PER_S = 400_000
TARGET_US_SATURATION = 2.0


def panel_row(axes, data, xlabel, note):
    xs = sorted(data)
    rate = [data[x][0] / 1000 for x in xs]
    cost = [data[x][1] for x in xs]
    p99 = [data[x][2] / 1000 for x in xs]
    ax_rate, ax_cost, ax_p99 = axes
    ax_rate.plot(xs, rate, "o-", color="tab:blue")
    ax_rate.axhline(TARGET_DELIVERIES_PER_S / 1000, ls="--", color="grey", lw=1)
    ax_rate.set_ylabel("deliveries/s (thousands)")
    ax_rate.set_ylim(bottom=0)
    ax_cost.plot(xs, cost, "o-", color="tab:orange")
    ax_cost.axhline(TARGET_US_SATURATION, ls="--", color="grey", lw=1)
    ax_cost.set_ylabel("server CPU µs / delivery")
    ax_cost.set_ylim(bottom=0)
    ax_p99.plot(xs, p99, "o-", color="tab:red")
    ax_p99.set_ylabel("p99 latency (s, unpaced)")
    ax_p99.set_ylim(bottom=0)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:,}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    ax_rate.set_title(note, fontsize=9, loc="left")


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "docs" / "benchmarks-scaling.png"
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    panel_row(axes[0], BY_SUBSCRIBERS, "subscribers (100 symbols)", "by subscribers")
    panel_row(axes[1], BY_SYMBOLS, "symbols (1 000 subscribers)", "by symbols")
    fig.suptitle(
        "tickwire, one node, saturation (--rate 0 --batch 10), medians of 3 runs\n"
        "2-core shared VM, loadgen on the same machine; dashed: issue 4 targets "
        "(400k deliveries/s, 2 µs/delivery)",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
