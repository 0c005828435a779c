"""Streaming WebDataset loader: shards -> rank/worker split -> shuffle -> decode+augment -> batch.

The open_clip chain, made resumable and exact:

* Every epoch has a fixed number of steps (``samples_per_epoch // global_batch``, from
  ``dataset.json``), and every loader "slot" (one per worker per rank) yields a fixed quota of
  batches, cycling its shards if it runs short, so all ranks see equal batches and DDP never hangs.
* A slot's stream depends only on (seed, epoch, rank, slot): the epoch's shard order, the shard
  split, the shuffle buffer and each sample's augmentation (seeded by its key) are all derived from
  the seed. Resuming at (epoch, step) rebuilds the same streams and skips the consumed batches
  before augmentation, so a resumed run sees exactly the batches of an uninterrupted one.
* Bad samples (undecodable image, missing member, bad label, unreadable tar) are skipped and
  counted by reason; each batch carries the counts since the previous batch in ``"_skipped"``.
  A shard that cannot be read to its end (a truncated tar, or fewer samples than its length in
  ``dataset.json``) is an error, never silent: it is counted (``unreadable_shard``) and named in
  ``"_bad_shards"``, and the trainer warns about it.
* One iterator serves the whole run: each worker process walks epoch after epoch (the streams of
  every epoch are the same as if the loader were rebuilt per epoch), so workers start once.

Batches hold uint8 NHWC images (4x less host-to-device traffic than float); the trainer normalizes
them on the device (``to_device``) to NCHW float in channels-last memory.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from maskgen.errors import InputError
from maskgen.training.augment import AugmentConfig, augment

log = logging.getLogger("maskgen.train")
IMAGE_SIZE = 112
_FAIL_LIMIT = 1000  # consecutive bad samples with no good one: the data is unusable, stop


class UnusableSample(Exception):
    """A sample that cannot be used; ``reason`` is the counted label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard list from a glob, a brace pattern, a ``::``-separated string, a list, or URLs."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for item in items:
        for part in str(item).split("::"):
            for url in braceexpand(part):
                if "://" not in url and any(c in url for c in "*?["):
                    found = sorted(glob.glob(os.path.expanduser(url)))
                    if not found:
                        raise InputError(f"no shard matches {url!r}")
                    out.extend(found)
                else:
                    path = url if "://" in url else os.path.expanduser(url)
                    if "://" not in url and not os.path.isfile(path):
                        raise InputError(f"shard not found: {path}")
                    out.append(path)
    if not out:
        raise InputError(f"no shards in {spec!r}")
    return out


@dataclass
class ShardSetInfo:
    num_samples: int
    num_classes: int | None
    shard_lengths: dict[str, int] = field(default_factory=dict)
    twins: bool | None = None
    path: str | None = None


def _first(d: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return None


def find_dataset_json(shards: Sequence[str]) -> Path | None:
    """``dataset.json`` next to the shards or one folder up (``<out>/shards/*.tar``)."""
    first = shards[0]
    if "://" in first:
        return None
    folder = Path(first).resolve().parent
    for cand in (folder / "dataset.json", folder.parent / "dataset.json"):
        if cand.is_file():
            return cand
    return None


def read_dataset_info(shards: Sequence[str], dataset_json: str | os.PathLike | None = None) -> ShardSetInfo:
    """Sample and class counts of a build, from its ``dataset.json``.

    Counts only the listed shards when the file gives per-shard lengths (a subset of a build).
    Without a ``dataset.json`` the shards are scanned once (fine for small local sets).
    """
    path = Path(dataset_json) if dataset_json else find_dataset_json(shards)
    if path is None:
        return scan_shards(shards)
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: dataset.json is not a JSON object")
    lengths: dict[str, int] = {}
    listed = _first(meta, "shards", "shard_lengths")
    if isinstance(listed, dict):
        lengths = {Path(k).name: int(v) for k, v in listed.items()}
    elif isinstance(listed, list):
        for s in listed:
            if isinstance(s, dict):
                name = _first(s, "name", "file", "path", "shard")
                n = _first(s, "num_samples", "samples", "count", "n")
                if name is not None and n is not None:
                    lengths[Path(str(name)).name] = int(n)
    names = [Path(s.split("://")[-1]).name for s in shards]
    if lengths and all(n in lengths for n in names):
        num_samples = sum(lengths[n] for n in names)
    else:
        num_samples = _first(meta, "num_samples", "samples", "n_samples", "num_ok")
        if num_samples is None:
            raise InputError(f"{path}: no sample count (num_samples) in dataset.json")
    num_classes = _first(meta, "num_classes", "classes", "n_classes", "num_identities")
    if isinstance(num_classes, list):
        num_classes = len(num_classes)
    twins = _first(meta, "twins")
    return ShardSetInfo(int(num_samples), None if num_classes is None else int(num_classes), lengths,
                       None if twins is None else bool(twins), str(path))


def scan_shards(shards: Sequence[str]) -> ShardSetInfo:
    """Counts of shards without a ``dataset.json`` (read once); a shard that cannot be read to
    its end is named in a warning and counted with the samples it gave."""
    counts: dict[str, int] = {}
    max_label = -1

    def warn(exn: Exception) -> bool:
        log.warning("shard %s cannot be read to its end (%s: %s): counted as an error",
                    url, type(exn).__name__, exn)
        return False

    for url in shards:
        n = 0
        for sample in tarfile_samples([{"url": url}], handler=warn):
            n += 1
            if "cls" in sample:
                try:
                    max_label = max(max_label, int(sample["cls"]))
                except ValueError:
                    pass
        counts[Path(url).name] = n
    return ShardSetInfo(sum(counts.values()), max_label + 1 if max_label >= 0 else None, counts)


def _sample_seed(*parts: int | str) -> list[int]:
    return [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]


def decode_resized(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 (size, size, 3); grayscale/alpha/16-bit handled, else UnusableSample."""
    if not data:
        raise UnusableSample("empty_image")
    # decoded straight to RGB where OpenCV can (>= 4.10); a numpy channel flip costs a decode
    flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR if flag is None else flag)
    if img is not None and flag is None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img is None:
        raise UnusableSample("decode_failed")
    if img.shape[0] != size or img.shape[1] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


@dataclass
class LoaderConfig:
    shards: list[str]
    batch_size: int
    steps_per_epoch: int
    num_classes: int | None = None
    seed: int = 0
    shuffle_buffer: int = 2000
    resampled: bool = False
    train_mask_ratio: float | None = None
    mask_choice_per_epoch: bool = False
    pairs: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    image_size: int = IMAGE_SIZE
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    shard_lengths: dict[str, int] = field(default_factory=dict)  # name -> samples (dataset.json)


class ShardStream(IterableDataset):
    """The per-worker sample stream; ``set_position`` before creating each epoch's iterator."""

    def __init__(self, cfg: LoaderConfig):
        super().__init__()
        self.cfg = cfg
        self.epoch = self.start_epoch = 0
        self.start_step = 0
        self.end_step: int | None = None
        self._skipped: Counter[str] = Counter()
        self._bad_shards: dict[str, str] = {}
        self._tar_error = ""

    def set_position(self, epoch: int, step: int = 0, end_step: int | None = None) -> None:
        """Start the next iterator at (epoch, step in epoch) and run to global step ``end_step``
        (default: the end of that epoch)."""
        self.epoch, self.start_step = int(epoch), int(step)
        self.start_epoch = self.epoch  # self.epoch moves on while an iterator walks the epochs
        self.end_step = None if end_step is None else int(end_step)

    # -- shard plan ---------------------------------------------------------------------------
    def _handler(self, exn: Exception) -> bool:
        self._skipped[f"tar_error:{type(exn).__name__}"] += 1
        first = exn.args[0] if exn.args else ""
        self._tar_error = f"{type(exn).__name__}: {first if isinstance(first, str) else exn}"
        return True

    def _shard_passes(self, gslot: int, nslots: int) -> Iterator[list[tuple[str, int | None]]]:
        """Endless stream of passes; a pass is this slot's list of (url, sample filter)."""
        cfg = self.cfg
        shards = cfg.shards
        if cfg.resampled:  # one endless pass of shards drawn with replacement
            rng = np.random.default_rng(_sample_seed(cfg.seed, self.epoch, gslot, "resampled"))
            while True:
                yield [(shards[int(rng.integers(len(shards)))], None) for _ in range(len(shards))]
        for pass_ in range(1 << 30):
            order = np.random.default_rng(_sample_seed(cfg.seed, self.epoch, pass_, "shards")).permutation(len(shards))
            if len(shards) >= nslots:
                yield [(shards[i], None) for i in order[gslot::nslots]]
            else:  # fewer shards than slots: every slot reads all, keeps every nslots-th sample
                yield [(shards[i], gslot) for i in order]

    def _raw_samples(self, gslot: int, nslots: int) -> Iterator[dict[str, Any] | None]:
        """Raw tar samples of this slot; ``None`` marks the end of a pass (flushes the shuffle)."""
        for plan in self._shard_passes(gslot, nslots):
            counter = 0
            for url, keep in plan:
                got = 0
                self._tar_error = ""
                for sample in tarfile_samples([{"url": url}], handler=self._handler):
                    got += 1
                    if keep is not None:
                        counter += 1
                        if (counter - 1) % nslots != keep:
                            continue
                    yield sample
                self._check_shard(url, got)
            if not self.cfg.resampled:
                yield None

    def _check_shard(self, url: str, got: int) -> None:
        """Count a shard that ended early (a tar error, or fewer samples than recorded)."""
        name = Path(url.split("://")[-1]).name
        expected = self.cfg.shard_lengths.get(name)
        if got == 0:
            self._skipped["empty_or_unreadable_shard"] += 1
            reason = self._tar_error or "no sample"
        elif self._tar_error:
            reason = f"{self._tar_error} after {got} samples"
        elif expected is not None and got < expected:
            reason = f"{got} of the {expected} samples dataset.json records (truncated?)"
        else:
            return
        self._skipped["unreadable_shard"] += 1
        self._bad_shards[name] = reason

    def _shuffled(self, samples: Iterator[dict[str, Any] | None], gslot: int) -> Iterator[dict[str, Any]]:
        """Reservoir shuffle; drained at every end of pass so an epoch holds each sample once."""
        size = self.cfg.shuffle_buffer
        if size <= 1:  # no shuffling: the shards' own order within each pass
            yield from (s for s in samples if s is not None)
            return
        rng = np.random.default_rng(_sample_seed(self.cfg.seed, self.epoch, gslot, "shuffle"))
        buf: list[dict[str, Any]] = []
        for s in samples:
            if s is None:
                order = rng.permutation(len(buf))
                yield from (buf[i] for i in order)
                buf = []
                continue
            if len(buf) < size:
                buf.append(s)
                continue
            i = int(rng.integers(size))
            buf[i], s = s, buf[i]
            yield s
        yield from buf

    # -- decoding -----------------------------------------------------------------------------
    def _label(self, sample: dict[str, Any]) -> int:
        raw = sample.get("cls")
        if raw is None:
            raise UnusableSample("missing_label")
        try:
            label = int(raw.decode() if isinstance(raw, bytes) else raw)
        except ValueError:
            raise UnusableSample("bad_label") from None
        if label < 0 or (self.cfg.num_classes is not None and label >= self.cfg.num_classes):
            raise UnusableSample("label_out_of_range", str(label))
        return label

    def _masked_flag(self, sample: dict[str, Any]) -> int:
        raw = sample.get("json")
        if raw is None:
            return 0
        try:
            return int(bool(json.loads(raw).get("masked", False)))
        except (ValueError, AttributeError):
            return 0

    def decode(self, sample: dict[str, Any], do_augment: bool = True) -> dict[str, Any]:
        """Raw tar sample -> {image, label, masked, key[, image_orig, image_masked]}."""
        cfg = self.cfg
        key = sample["__key__"]
        label = self._label(sample)
        size = cfg.image_size
        ratio = cfg.train_mask_ratio
        if cfg.pairs and ratio is None:
            ratio = 0.5
        out: dict[str, Any] = {"label": label, "key": key}
        if ratio is not None or cfg.pairs:
            if "orig.jpg" not in sample or "masked.jpg" not in sample:
                raise UnusableSample("missing_twin")
            parts = (cfg.seed, self.epoch, key, "mask") if cfg.mask_choice_per_epoch else (cfg.seed, key, "mask")
            masked = bool(np.random.default_rng(_sample_seed(*parts)).random() < ratio)
            if cfg.pairs:
                orig = decode_resized(sample["orig.jpg"], size)
                msk = decode_resized(sample["masked.jpg"], size)
                images = {"image_orig": orig, "image_masked": msk}
            else:
                images = {"image": decode_resized(sample["masked.jpg" if masked else "orig.jpg"], size)}
            out["masked"] = int(masked)
        else:
            if "jpg" not in sample:
                raise UnusableSample("missing_image")
            images = {"image": decode_resized(sample["jpg"], size)}
            out["masked"] = self._masked_flag(sample)
        if do_augment:
            for name, img in images.items():  # equal generators: a pair gets the same transform
                rng = np.random.default_rng(_sample_seed(cfg.seed, self.epoch, key, "augment"))
                images[name] = augment(img, rng, cfg.augment)
        if cfg.pairs:
            images["image"] = images["image_masked"] if out["masked"] else images["image_orig"]
        out.update(images)
        return out

    def _decoded(self, raw: Iterator[dict[str, Any]], do_augment: bool = True) -> Iterator[dict[str, Any]]:
        fails = 0
        for sample in raw:
            try:
                yield self.decode(sample, do_augment)
                fails = 0
            except UnusableSample as exc:
                self._skipped[exc.reason] += 1
                fails += 1
            except Exception as exc:  # noqa: BLE001 - any per-sample failure is data, not a crash
                self._skipped[f"error:{type(exc).__name__}"] += 1
                fails += 1
            if fails >= _FAIL_LIMIT:
                raise RuntimeError(f"{fails} consecutive unusable samples; reasons: {dict(self._skipped)}")

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "label": torch.tensor([s["label"] for s in items], dtype=torch.long),
            "masked": torch.tensor([s["masked"] for s in items], dtype=torch.long),
            "key": [s["key"] for s in items],
        }
        for name in ("image", "image_orig", "image_masked"):
            if name in items[0]:
                batch[name] = torch.from_numpy(np.stack([s[name] for s in items]))
        batch["_skipped"] = dict(self._skipped)
        batch["_bad_shards"] = dict(self._bad_shards)
        batch["_worker_pid"] = os.getpid()
        self._skipped.clear()
        self._bad_shards.clear()
        return batch

    # -- iteration ----------------------------------------------------------------------------
    def slot_plan(self, worker: int, num_workers: int, epoch: int | None = None) -> tuple[int, int, int]:
        """(slot, batches to skip, batches to yield) of ``worker`` in ``epoch``.

        One iterator walks the run from (start epoch, start step) to ``end_step``; the DataLoader
        takes batch k of it from worker k % num_workers, so in every epoch a worker serves the
        steps of one residue class, i.e. one slot's stream of that epoch.
        """
        steps, start = self.cfg.steps_per_epoch, self.start_epoch * self.cfg.steps_per_epoch + self.start_step
        epoch = self.start_epoch if epoch is None else epoch
        end = self._end()
        first = epoch * steps  # global step of this epoch's first batch
        slot = (worker + start - first) % num_workers
        lo = max(start, first) - first  # steps of this epoch inside [start, end)
        hi = min(end, first + steps) - first
        skip = len(range(slot, lo, num_workers))
        total = len(range(slot, hi, num_workers))
        return slot, skip, max(0, total - skip)

    def _end(self) -> int:
        steps = self.cfg.steps_per_epoch
        return self.end_step if self.end_step is not None else (self.start_epoch + 1) * steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        start_epoch, steps = self.start_epoch, self.cfg.steps_per_epoch
        last_epoch = (self._end() - 1) // steps
        try:
            for epoch in range(start_epoch, last_epoch + 1):
                slot, skip, todo = self.slot_plan(worker, num_workers, epoch)
                self.epoch = epoch
                yield from self._epoch_batches(slot, skip, todo, num_workers)
        finally:
            self.epoch = start_epoch

    def _epoch_batches(self, slot: int, skip: int, todo: int, num_workers: int) -> Iterator[dict[str, Any]]:
        nslots = self.cfg.world_size * num_workers
        gslot = self.cfg.rank * num_workers + slot
        raw = self._shuffled(self._raw_samples(gslot, nslots), gslot)
        bs = self.cfg.batch_size
        if skip:  # consumed before the resume: validate (so skipped bad samples match), no augment
            validated = self._decoded(raw, do_augment=False)
            for _ in range(skip * bs):
                next(validated)
            self._skipped.clear()
            self._bad_shards.clear()
        samples = self._decoded(raw)
        for _ in range(todo):
            yield self._collate([next(samples) for _ in range(bs)])


def make_loader(cfg: LoaderConfig, pin_memory: bool = False) -> tuple[DataLoader, ShardStream]:
    """DataLoader over a ShardStream; batches are formed in the workers (batch_size=None)."""
    stream = ShardStream(cfg)
    kwargs: dict[str, Any] = {}
    if cfg.num_workers > 0:
        # Workers live as long as one iterator, and the trainer takes one iterator for the whole
        # run (all its epochs). Not ``persistent_workers``: a kept worker would also keep the
        # position of the previous iterator instead of the one set by ``set_position``.
        kwargs.update(prefetch_factor=4, persistent_workers=False)
    # Its own generator: creating an iterator must not draw from the global RNG (dropout, class
    # sampling), or a run resumed mid-epoch would diverge from an uninterrupted one.
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(stream, batch_size=None, num_workers=cfg.num_workers, pin_memory=pin_memory,
                        generator=generator, **kwargs)
    return loader, stream


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = True) -> dict[str, Any]:
    """Move a batch to ``device``; uint8 NHWC images become normalized NCHW float there."""
    out: dict[str, Any] = {}
    if isinstance(batch.get("label"), torch.Tensor):
        out["label_host"] = batch["label"]  # for host-side choices (triplets) without a device read
    for k, v in batch.items():
        if k.startswith("_"):
            continue
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if v.dtype == torch.uint8 and v.dim() == 4:
                # NHWC permuted to NCHW is channels-last in memory already; keep it that way.
                v = v.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
                if not channels_last:
                    v = v.contiguous()
        out[k] = v
    return out


def normalize_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """RGB uint8 (B,H,W,3) -> float (B,3,H,W) with (x/255 - 0.5)/0.5, the input of every model."""
    t = torch.as_tensor(images)
    return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
