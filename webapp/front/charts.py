"""Chart data of the search pages, as pure functions over plain lists (no ORM here).

The reward chart of a search with 20,000 children must load fast and stay light in the
browser, so series are reduced on the server before they are sent:

- rewards: at most `max_points` points; consecutive points are grouped in buckets and
  every bucket keeps its lowest and its highest reward, so the best (and the worst) child
  always stays on the chart and the spread of every stretch stays visible;
- running best: only the points where the best improves (a step line through them);
- moving average: a trailing mean computed over every reward, then thinned by stride;
- stopped children (early stopping): their values at the rung they reached, a scatter of
  its own (downsampled like the rewards), never in the running best or the average.
"""

from __future__ import annotations

from collections.abc import Sequence

from nas_engine.space import SearchSpace

MAX_POINTS = 2000
SPARK_BUCKETS = 30
# Short labels of the five decisions of a block, in controller order (DECISIONS_PER_BLOCK).
DECISION_SHORT = {"input_a": "in1", "input_b": "in2", "op_a": "op1", "op_b": "op2", "combine": "comb"}
RL_STRATEGIES = ("ppo", "reinforce")


def downsample(points: Sequence[tuple], max_points: int = MAX_POINTS) -> list[tuple]:
    """`points` sorted by x, each (x, y, ...). At most `max_points` of them, in x order: the
    lowest and the highest y of each of max_points // 2 buckets of consecutive points."""
    n = len(points)
    if n <= max_points:
        return list(points)
    buckets = max(1, max_points // 2)
    ys = [p[1] for p in points]
    out: list[tuple] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if lo >= hi:
            continue
        chunk = ys[lo:hi]
        i_min, i_max = lo + chunk.index(min(chunk)), lo + chunk.index(max(chunk))
        out.extend(points[i] for i in sorted({i_min, i_max}))
    return out


def thin(points: Sequence, max_points: int = MAX_POINTS) -> list:
    """Every k-th item so that at most `max_points` remain; the last one is always kept."""
    n = len(points)
    if n <= max_points:
        return list(points)
    step = -(-n // max(1, max_points - 1))  # ceil: leaves room for the last item
    out = list(points[::step])
    if (n - 1) % step:
        out.append(points[-1])
    return out


def running_best(points: Sequence[tuple]) -> list[tuple[int, float]]:
    """(x, best so far) at every x where the best improves; `points` sorted by x."""
    out: list[tuple[int, float]] = []
    for x, y, *_ in points:
        if not out or y > out[-1][1]:
            out.append((x, y))
    return out


def moving_window(n: int) -> int:
    """Trailing window of the moving average: about 1/50 of the rewards, 5 to 200."""
    return max(5, min(200, n // 50))


def moving_average(points: Sequence[tuple], window: int) -> list[tuple[int, float]]:
    """(x, mean of the last `window` rewards up to x) at every point; `points` sorted by x."""
    out: list[tuple[int, float]] = []
    total = 0.0
    ys = [p[1] for p in points]
    for i, (x, y, *_) in enumerate(points):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append((x, total / min(i + 1, window)))
    return out


def reward_series(points: Sequence[tuple], max_points: int = MAX_POINTS) -> dict:
    """Everything the reward chart needs, from (sample_index, reward) sorted by sample_index."""
    window = moving_window(len(points))
    shown = downsample(points, max_points)
    best = running_best(points)
    average = thin(moving_average(points, window), max_points)
    return {
        "total": len(points),
        "x": [p[0] for p in shown],
        "y": [p[1] for p in shown],
        "best": {"x": [p[0] for p in best], "y": [p[1] for p in best]},
        "moving_average": {
            "window": window,
            "x": [p[0] for p in average],
            "y": [round(p[1], 6) for p in average],
            "tail": [p[1] for p in points[-window:]],  # lets the page continue the average live
        },
    }


def point_series(points: Sequence[tuple], max_points: int = MAX_POINTS) -> dict:
    """A scatter of (sample_index, value) sorted by sample_index, downsampled as the rewards
    are, with no running best and no average: the stopped children's rung values."""
    shown = downsample(points, max_points)
    return {"total": len(points), "x": [p[0] for p in shown], "y": [p[1] for p in shown]}


def policy_labels(space: SearchSpace) -> tuple[list[str], list[list[str]]]:
    """Row labels of the policy heatmap ("normal b1 op1") and the option names of every row."""
    rows, options = [], []
    inputs = ["h0", "h1"] + [f"b{i + 1}" for i in range(space.num_blocks)]
    for name in space.decision_names():
        cell, block, what = name.split(".")
        b = int(block.removeprefix("block"))
        rows.append(f"{cell} b{b + 1} {DECISION_SHORT.get(what, what)}")
        if what.startswith("input"):
            options.append(inputs[: space.num_inputs(b)])
        elif what.startswith("op"):
            options.append(list(space.ops))
        else:
            options.append(list(space.combines))
    return rows, options


def best_so_far_buckets(rows: Sequence[tuple[int, float]], buckets: int = SPARK_BUCKETS) -> list[float]:
    """(bucket, best reward in it) rows of one search -> best so far per bucket, from the
    first bucket with a reward to the last one (empty buckets carry the best forward)."""
    by_bucket = {b: r for b, r in rows if r is not None}
    if not by_bucket:
        return []
    out: list[float] = []
    best = None
    for b in range(min(by_bucket), max(by_bucket) + 1):
        if b in by_bucket and (best is None or by_bucket[b] > best):
            best = by_bucket[b]
        out.append(best)
    return out


def sparkline_svg(values: Sequence[float], width: int = 96, height: int = 24) -> str:
    """A small inline SVG line of `values` (numbers only: nothing to escape); '' if none."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo
    pad = 2
    n = len(values)

    def xy(i: int, v: float) -> str:
        x = pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5)
        y = height / 2 if span == 0 else pad + (height - 2 * pad) * (1 - (v - lo) / span)
        return f"{x:.1f},{y:.1f}"

    points = " ".join(xy(i, v) for i, v in enumerate(values))
    if n == 1:
        points += f" {width - pad:.1f},{height / 2 if span == 0 else pad:.1f}"
    title = f"best reward {values[0]:.4f} → {values[-1]:.4f}"
    return (
        f'<svg class="spark" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{title}"><title>{title}</title>'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{points}"/></svg>'
    )
