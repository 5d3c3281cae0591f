"""Plots the server RSS samples of scripts/soak: rss.csv -> rss.png."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    with open(src, newline="") as f:
        rows = [(int(r["t_s"]), int(r["rss_kib"]) / 1024) for r in csv.DictReader(f)]
    if not rows:
        sys.exit("no samples")
    t, rss = zip(*rows)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.plot(t, rss, lw=1.2)
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"tickwire soak: RSS every second ({min(rss):.0f}-{max(rss):.0f} MiB)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
