"""Training-step throughput and peak memory: our NASNet-A against timm's NASNetALarge.

Both networks are NASNet-A built at the same N@P (timm's port fixes N = 6 and the
ImageNet stacking, so ours is built with the same macro: stem conv, two stem reduction
cells, skip-reduction-input wiring), fed the same input size and batch, trained with
the same SGD step. Each measurement runs in a fresh subprocess so that peak memory (growth
of max RSS during training on CPU, max allocated on CUDA) belongs to one model only; runs alternate ours /
timm so that a noisy neighbour hurts both. Prints images/s, peak memory and the ratio.

    python bench/child_throughput.py                    # CPU defaults: 6@384, 64 px, batch 16
    python bench/child_throughput.py --device cuda      # GPU defaults: 6@4032, 331 px, batch 32, bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def build(which: str, penultimate: int, stem_size: int, num_classes: int) -> torch.nn.Module:
    if which == "timm":
        import timm

        return timm.create_model("nasnetalarge", num_features=penultimate, stem_size=stem_size, num_classes=num_classes)
    from nas_engine.cells import NASNET_A
    from nas_engine.network import MacroConfig, NASNetwork

    class LogitsOnly(torch.nn.Module):  # timm returns logits; ours returns (logits, aux)
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)[0]

    macro = MacroConfig(
        kind="imagenet",
        repeats=6,
        filters=penultimate // 24,
        stem_multiplier=stem_size / 32,
        num_classes=num_classes,
        image_size=64,
        skip_reduction_input=True,
    )
    return LogitsOnly(NASNetwork(NASNET_A, macro))


def measure(args: argparse.Namespace) -> dict:
    """One model, one process: warm up, then time training steps."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args.worker, args.penultimate, args.stem_size, 1000).to(device)
    params = sum(p.numel() for p in model.parameters())
    cuda = device.type == "cuda"
    # Both models in channels_last: the faster layout for each on CPU and GPU alike.
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    # CUDA: peak allocated by the training steps. CPU: growth of the process's peak RSS
    # over what it held before the first step (weights, input), i.e. activations,
    # gradients and optimizer state.
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {
        "model": args.worker,
        "params": params,
        "images_per_s": args.batch_size / statistics.median(times),
        "peak_mib": peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--penultimate", type=int, help="P of 6@P (default 384 CPU, 4032 CUDA)")
    parser.add_argument("--stem-size", type=int, help="stem conv filters (default 32 CPU, 96 CUDA)")
    parser.add_argument("--image-size", type=int, help="default 64 CPU, 331 CUDA")
    parser.add_argument("--batch-size", type=int, help="default 16 CPU, 32 CUDA")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per model")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--worker", choices=["ours", "timm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.penultimate = args.penultimate or (4032 if cuda else 384)
    args.stem_size = args.stem_size or (96 if cuda else 32)
    args.image_size = args.image_size or (331 if cuda else 64)
    args.batch_size = args.batch_size or (32 if cuda else 16)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(args)))
        return

    forwarded = [a for a in sys.argv[1:]]
    results: dict[str, list[dict]] = {"ours": [], "timm": []}
    for _ in range(args.rounds):
        for which in ("ours", "timm"):
            out = subprocess.run(
                [sys.executable, __file__, *forwarded, "--worker", which], capture_output=True, text=True, check=True
            )
            results[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"NASNet-A 6@{args.penultimate}, stem {args.stem_size}, {args.image_size}px, batch {args.batch_size}, "
        f"{args.device}, {torch.get_num_threads()} threads, {args.steps} timed steps x {args.rounds} rounds"
    )
    best = {}
    for which, runs in results.items():
        best[which] = {
            "params": runs[0]["params"],
            "images_per_s": max(r["images_per_s"] for r in runs),
            "peak_mib": min(r["peak_mib"] for r in runs),
        }
        b = best[which]
        print(f"  {which:5s} {b['params']:>12,} params  {b['images_per_s']:8.1f} img/s  peak {b['peak_mib']:8.1f} MiB")
    speed = best["ours"]["images_per_s"] / best["timm"]["images_per_s"]
    memory = best["ours"]["peak_mib"] / best["timm"]["peak_mib"]
    print(f"  ratio ours/timm: throughput {speed:.2f}x, peak memory {memory:.2f}x")


if __name__ == "__main__":
    main()
