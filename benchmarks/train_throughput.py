"""Training throughput of `maskgen train`: GPU step on synthetic data vs streaming real shards,
and the CPU input pipeline's samples/s per worker.

    python benchmarks/train_throughput.py --shards 'out/shards/*.tar'          # GPU: (a), (b), (c)
    python benchmarks/train_throughput.py --shards ... --loader-only           # (c) only, any machine

(a) IResNet-50, batch 512, ArcFace, 93,431 classes, synthetic uint8 images already on the GPU,
    through the trainer's own `train_step` (bf16 autocast + channels-last on GPUs with bf16).
(b) the same step fed by the streaming WebDataset loader over real shards on local disk.
    Target: (a) >= 4,400 samples/s on one H100; (b) >= 90% of (a).
(c) decode + augment samples/s of one loader worker (one CPU core), measured in this process with
    the published augmentation recipe and with flip only, against decode-only as the baseline
    of the same run; workers needed = GPU samples/s / per-worker samples/s.
(d) ``--partial-fc-memory``: classifier memory per rank of the sharded Partial FC on the CPU
    (gloo processes), at two class counts and 1, 2 and 4 ranks: rows per rank, the bytes of the
    class centres + their gradient + SGD momentum, and the growth of each process's peak
    resident memory over one step (target: falls as 1/world).
Without a GPU, (a) and (b) run a tiny CPU version and say so: those are not GPU figures.

    python benchmarks/train_throughput.py --smoke                      # every path, tiny, any machine
    python benchmarks/train_throughput.py --partial-fc-memory          # (d), CPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskgen.training.augment import PUBLISHED, AugmentConfig  # noqa: E402
from maskgen.training.checkpoint import build_method  # noqa: E402
from maskgen.training.config import resolve_config  # noqa: E402
from maskgen.training.loader import (  # noqa: E402
    LoaderConfig,
    ShardStream,
    expand_shards,
    make_loader,
    read_dataset_info,
    to_device,
)
from maskgen.training.trainer import GradClipper, build_optimizer, pick_precision, train_step  # noqa: E402


def _setup(args, device: torch.device):
    cfg = resolve_config(
        shards="unused", model=args.model, method="arcface", num_classes=args.num_classes,
        batch_size=args.batch_size, lr=0.1, method_options={"sample_rate": args.sample_rate},
        model_options={"input_size": args.image_size} if args.image_size != 112 else {},
    )
    torch.manual_seed(0)
    method = build_method(cfg).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        method.to(memory_format=torch.channels_last)
    precision = pick_precision(args.precision, device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, params)
    if args.compile:
        method.compile()  # in place, as the trainer does (and before DDP when there is one)
    clip = GradClipper(params, [], 5.0)
    return method, optimizer, clip, scaler, amp_dtype, precision, channels_last


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_synthetic(args, device: torch.device) -> dict:
    model, opt, clip, scaler, amp_dtype, precision, cl = _setup(args, device)
    g = torch.Generator(device=device).manual_seed(0)
    bs, s = args.batch_size, args.image_size
    raw = {
        "image": torch.randint(0, 256, (bs, s, s, 3), dtype=torch.uint8, device=device, generator=g),
        "label": torch.randint(0, args.num_classes, (bs,), device=device, generator=g),
        "masked": torch.zeros(bs, dtype=torch.long, device=device),
    }
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        batch = to_device(raw, device, cl)  # the same uint8 -> normalized float path as real data
        out, _ = train_step(model, batch, opt, clip, scaler, amp_dtype)
    _sync(device)
    dt = time.perf_counter() - t0
    return {"samples_per_s": args.steps * bs / dt, "precision": precision, "loss": float(out["loss"].detach())}


def bench_streaming(args, device: torch.device, shards: list[str]) -> dict:
    model, opt, clip, scaler, amp_dtype, precision, cl = _setup(args, device)
    info = read_dataset_info(shards)
    steps = args.warmup + args.steps
    lcfg = LoaderConfig(
        shards=shards, batch_size=args.batch_size, steps_per_epoch=steps, num_classes=None,
        shuffle_buffer=args.shuffle_buffer, resampled=True, augment=AugmentConfig(flip=0.5),
        image_size=args.image_size, num_workers=args.num_workers,
    )
    loader, stream = make_loader(lcfg, pin_memory=device.type == "cuda")
    stream.set_position(0, 0)
    wait = 0.0
    it = iter(loader)
    for i in range(steps):
        if i == args.warmup:
            _sync(device)
            t0, wait = time.perf_counter(), 0.0
        tw = time.perf_counter()
        raw = next(it)
        wait += time.perf_counter() - tw
        batch = to_device(raw, device, cl)
        batch["label"] = batch["label"] % args.num_classes
        out, _ = train_step(model, batch, opt, clip, scaler, amp_dtype)
    _sync(device)
    dt = time.perf_counter() - t0
    return {"samples_per_s": args.steps * args.batch_size / dt, "data_wait": wait / dt,
            "num_workers": args.num_workers, "dataset_samples": info.num_samples}


def bench_loader_cpu(shards: list[str], samples: int, image_size: int) -> dict:
    """Samples/s of one worker (this process, one core): decode only, flip, published recipe."""
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    results = {}
    recipes = {"decode_only": AugmentConfig(flip=0.0), "decode_flip": AugmentConfig(flip=0.5),
               "decode_published_augment": PUBLISHED}
    for name, aug in recipes.items():
        cfg = LoaderConfig(shards=shards, batch_size=64, steps_per_epoch=max(1, samples // 64),
                           shuffle_buffer=256, resampled=True, augment=aug, image_size=image_size)
        stream = ShardStream(cfg)
        stream.set_position(0, 0)
        it = iter(stream)
        next(it)  # open the first shard and fill the shuffle buffer outside the timing
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        for batch in it:
            n += len(batch["key"])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        # samples per CPU-second is the per-core rate even on a shared, oversubscribed machine
        results[name] = {"samples_per_cpu_s": n / cpu, "samples_per_wall_s": n / wall, "samples": n}
    base = results["decode_only"]["samples_per_cpu_s"]
    results["augment_cost_vs_decode_only"] = base / results["decode_published_augment"]["samples_per_cpu_s"]
    return results


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pfc_rank(rank: int, world: int, port: int, classes: int, dim: int, batch: int, out: str) -> None:
    import torch.distributed as dist

    from maskgen.training.heads import CombinedMarginLoss, PartialFC, classifier_sharding

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    before = _peak_rss_mb()
    with classifier_sharding(rank, world):
        head = PartialFC(dim, classes, CombinedMarginLoss(64.0, 1.0, 0.5, 0.0))
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    emb = torch.randn(batch, dim, generator=g, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), generator=g)
    loss, _ = head(emb, labels)
    loss.backward()
    opt.step()
    tensors = sum(t.numel() * t.element_size() for t in
                  [head.weight, head.weight.grad, opt.state[head.weight]["momentum_buffer"]])
    Path(out, f"pfc-{classes}-{world}-{rank}.json").write_text(json.dumps({
        "rows": head.num_local, "tensor_mb": tensors / 2**20, "peak_rss_growth_mb": _peak_rss_mb() - before,
        "loss": float(loss.detach())}))
    if world > 1:
        dist.destroy_process_group()


def bench_partial_fc_memory(sizes: list[int], dim: int = 128, batch: int = 64) -> list[dict]:
    """(d): per-rank classifier memory of the sharded head, 1/2/4 gloo ranks on the CPU."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for classes in sizes:
            for world in (1, 2, 4):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                # fresh processes for every world size (one rank too): equal starting points for peak memory
                mp.start_processes(_pfc_rank, args=(world, port, classes, dim, batch // world, tmp), nprocs=world,
                                   start_method="spawn")
                per = [json.loads(Path(tmp, f"pfc-{classes}-{world}-{r}.json").read_text()) for r in range(world)]
                rows.append({"classes": classes, "world": world, "rows_per_rank": max(p["rows"] for p in per),
                             "tensor_mb_per_rank": max(p["tensor_mb"] for p in per),
                             "peak_rss_growth_mb_per_rank": max(p["peak_rss_growth_mb"] for p in per),
                             "loss": per[0]["loss"]})
                r = rows[-1]
                print(f"(d) {classes:>7} classes x {dim}, {world} rank(s): {r['rows_per_rank']} rows/rank, "
                      f"centres+grad+momentum {r['tensor_mb_per_rank']:.1f} MB/rank, peak RSS growth "
                      f"{r['peak_rss_growth_mb_per_rank']:.1f} MB/rank (loss {r['loss']:.3f})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="iresnet50")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--num-classes", type=int, default=93431)
    ap.add_argument("--sample-rate", type=float, default=1.0, help="partial FC sampling rate")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--shards", default=None, help="real shards for (b) and (c)")
    ap.add_argument("--num-workers", type=int, default=12)
    ap.add_argument("--shuffle-buffer", type=int, default=2000)
    ap.add_argument("--loader-samples", type=int, default=3000, help="samples per recipe in (c)")
    ap.add_argument("--loader-only", action="store_true", help="only (c)")
    ap.add_argument("--gpu-target", type=float, default=4400.0, help="GPU samples/s to size (c) against")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--partial-fc-memory", action="store_true", help="only (d): sharded classifier memory per rank")
    ap.add_argument("--pfc-classes", default="20000,200000", help="class counts of (d)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes on any device (checks that every path runs; not a throughput figure)")
    args = ap.parse_args(argv)

    figures: dict = {"args": vars(args)}
    if args.partial_fc_memory:
        figures["partial_fc_memory"] = bench_partial_fc_memory([int(c) for c in args.pfc_classes.split(",")])
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return figures
    shards = expand_shards(args.shards) if args.shards else None
    if not args.loader_only:
        if torch.cuda.is_available():
            device = torch.device("cuda")
            figures["device"] = torch.cuda.get_device_name(device)
        else:
            device = torch.device("cpu")
            figures["device"] = "cpu"
            if not args.smoke:
                print("no GPU: running the tiny smoke version of (a)/(b); these are NOT GPU figures")
            args.smoke = True
            torch.set_num_threads(1)
        if args.smoke:
            args.model, args.batch_size, args.num_classes = "iresnet18", 8, 1000
            args.steps, args.warmup, args.num_workers = 3, 1, min(args.num_workers, 1)
            args.loader_samples = min(args.loader_samples, 200)
        figures["smoke"] = bool(args.smoke)
        print(f"device {figures['device']}: {args.model}, batch {args.batch_size}, "
              f"{args.num_classes} classes, ArcFace")
        figures["synthetic"] = bench_synthetic(args, device)
        print(f"(a) synthetic on device: {figures['synthetic']['samples_per_s']:.0f} samples/s "
              f"({figures['synthetic']['precision']})")
        if shards:
            figures["streaming"] = bench_streaming(args, device, shards)
            ratio = figures["streaming"]["samples_per_s"] / figures["synthetic"]["samples_per_s"]
            figures["streaming"]["ratio_to_synthetic"] = ratio
            print(f"(b) streaming real shards, {args.num_workers} workers: "
                  f"{figures['streaming']['samples_per_s']:.0f} samples/s = {100 * ratio:.0f}% of (a), "
                  f"data wait {100 * figures['streaming']['data_wait']:.0f}%")
    if shards:
        cpu = bench_loader_cpu(shards, args.loader_samples, args.image_size)
        figures["loader_cpu"] = cpu
        per_worker = cpu["decode_published_augment"]["samples_per_cpu_s"]
        gpu_rate = figures.get("synthetic", {}).get("samples_per_s") if figures.get("device", "cpu") != "cpu" else None
        target = gpu_rate or args.gpu_target
        cpu["workers_needed_for_target"] = math.ceil(target / per_worker)
        cpu["target_samples_per_s"] = target
        rate = {k: cpu[k]["samples_per_cpu_s"] for k in ("decode_only", "decode_flip")}
        print(f"(c) one loader worker, samples per CPU-second at {args.image_size}x{args.image_size}: "
              f"decode only {rate['decode_only']:.0f}, decode+flip {rate['decode_flip']:.0f}, "
              f"decode+published augment {per_worker:.0f} "
              f"(augment costs {cpu['augment_cost_vs_decode_only']:.2f}x decode-only; wall-clock "
              f"{cpu['decode_published_augment']['samples_per_wall_s']:.0f}/s on this machine's load)")
        print(f"    workers needed for {target:.0f} samples/s: {cpu['workers_needed_for_target']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
