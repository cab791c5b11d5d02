"""The weighted, bucketed, captioned training stream (and the held-out validation set).

Per epoch: plan the copies per category (`ymn.data.multiply`, ED1 by default), shuffle the
shard order, split shards (or, with fewer shards than slots, samples) across ranks and
dataloader workers, read samples sequentially, emit each one `draws_for_sample` times, mix the
copies in a seeded shuffle buffer, then crop to the nearest aspect bucket, flip, caption and
group into one-bucket batches. State is per category only, never per image.

Batches per epoch, the rule every rank and worker follows: each slot (rank × dataloader worker)
yields exactly `batches_per_slot` = max(1, planned training draws // (batch_size × slots))
batches, computed from the draw plan alone, so every rank knows the count up front without
talking to the others. A slot whose share runs dry first (uneven shards, bucket remainders)
fills up with a redraw of its own samples (pass 1, 2, ... with its own seed); one with more
stops there. So every rank runs the same number of steps per epoch (DDP never waits at an
epoch end on a rank that has stopped) and the DataLoader's round-robin over workers never loses
a worker, which is what makes a mid-epoch resume exact (`resume_position`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import count, islice
from typing import Any

import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from ymn.data.batch import Batch
from ymn.data.buckets import apply_crop, bucket_table, nearest_bucket, plan_crop, transform_meta
from ymn.data.captions import CaptionConfig, build_caption
from ymn.data.decode import (
    Sample,
    SkipCounter,
    decode,
    is_val_key,
    iter_tar,
    manifest_categories,
    parse_sample,
    to_tensor,
)
from ymn.data.multiply import draws_for_sample, epoch_size, plan_epoch
from ymn.model.tokenizer import tokenize

# ---------------------------------------------------------------------------------------------
# Who reads what
# ---------------------------------------------------------------------------------------------


def process_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size) as given, else torch.distributed's, else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        ready = dist.is_available() and dist.is_initialized()
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)
    return rank, world_size


def dataloader_worker() -> tuple[int, int]:
    """(worker id, num_workers) of this DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def worker_slot(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(slot, n_slots) of this process: rank × dataloader workers + worker id."""
    rank, world_size = process_rank(rank, world_size)
    worker, n_workers = dataloader_worker()
    return rank * n_workers + worker, world_size * n_workers


def resume_position(worker: int, n_workers: int, consumed: int) -> tuple[int, int]:
    """(logical worker, batches to skip) for DataLoader worker `worker` when an epoch resumes
    after `consumed` of its batches.

    A DataLoader takes batches from its workers round-robin and starts every new iterator at
    worker 0, but the uninterrupted run's next batch is logical worker `consumed % n_workers`'s.
    Worker w therefore plays logical worker (w + consumed) % n_workers, which has produced
    consumed // n_workers batches, one more if it comes before the next in line. Exact because
    every worker yields the same number of batches per epoch (none drops out of the rotation).
    """
    logical = (worker + consumed) % n_workers
    return logical, consumed // n_workers + int(logical < consumed % n_workers)


def shard_order(shards: Sequence[str], seed: int, epoch: int) -> list[str]:
    """The epoch's shard order: a seeded shuffle, the same in every process."""
    order = list(shards)
    random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    return order


def iter_samples(
    shards: Sequence[str], slot: int, slots: int, counter: SkipCounter
) -> Iterator[Sample]:
    """This slot's samples: whole shards (round-robin) when there are at least as many shards as
    slots, else every `slots`-th sample of all shards. No sample goes to two slots."""
    by_shard = len(shards) >= slots
    mine = shards[slot::slots] if by_shard else shards
    index = 0
    for shard in mine:
        for key, parts in iter_tar(shard, counter):
            take = by_shard or index % slots == slot
            index += 1  # counted before parsing, so every slot numbers samples alike
            if take and (sample := parse_sample(shard, key, parts, counter)) is not None:
                yield sample


def iter_draws(
    shards: Sequence[str],
    categories: Mapping[str, tuple[int, float]],
    *,
    mode: str = "ed1",
    seed: int = 0,
    epoch: int = 0,
    slot: int = 0,
    slots: int = 1,
    val_fraction: float = 0.0,
    counter: SkipCounter | None = None,
) -> Iterator[tuple[Sample, int]]:
    """(sample, copies) for each training sample this slot reads in `epoch` (copies > 0), in
    shard order, without decoding images: the draw plan, cheap enough to count 100k draws."""
    counter = SkipCounter() if counter is None else counter
    plans = plan_epoch(categories, mode, seed, epoch)
    for sample in iter_samples(shard_order(shards, seed, epoch), slot, slots, counter):
        if is_val_key(sample.key, val_fraction):
            continue
        plan = plans.get(sample.category)
        if plan is None:
            counter.skip("unknown_category", sample.where, f"{sample.category!r} not in manifest")
            continue
        try:
            copies = draws_for_sample(
                sample.category, sample.meta["category_index"], plan, seed, epoch
            )
        except IndexError as exc:
            counter.skip("bad_json", sample.where, str(exc))
            continue
        if copies > 0:
            yield sample, copies


def shuffle_copies(
    draws: Iterator[tuple[Sample, int]], buffer_size: int, rng: random.Random
) -> Iterator[Sample]:
    """Each sample `copies` times, mixed by a seeded shuffle buffer of `buffer_size` entries."""
    buffer: list[Sample] = []
    for sample, copies in draws:
        sample.pending = copies
        for _ in range(copies):
            if len(buffer) < max(buffer_size, 1):
                buffer.append(sample)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], out = sample, buffer[i]
            yield out
    rng.shuffle(buffer)
    yield from buffer


# ---------------------------------------------------------------------------------------------
# One copy -> one training example; examples -> one-bucket batches
# ---------------------------------------------------------------------------------------------


@dataclass
class Example:
    """One rendered copy: bucket, pixels, caption, transformed metadata."""

    key: str
    bucket: tuple[int, int]
    pixels: torch.Tensor
    caption: str
    meta: dict[str, Any]


def render(
    sample: Sample,
    image: Any,
    buckets: Sequence[tuple[int, int]],
    caption: CaptionConfig,
    rng: random.Random,
    *,
    crop: str = "ed1",
    flip_p: float = 0.0,
    dropout: bool = True,
) -> Example:
    """Crop `image` to its nearest bucket, maybe flip, move the face boxes, build the caption."""
    size = image.size
    bucket = _nearest_bucket(size, tuple(buckets))
    plan = plan_crop(size, bucket, crop, rng)
    flip = flip_p > 0 and rng.random() < flip_p
    pixels = to_tensor(apply_crop(image, bucket, plan, flip))
    meta = transform_meta(sample.meta, size, plan, flip)
    meta["flipped"] = flip
    text = build_caption(meta, caption, rng, dropout=dropout)
    return Example(sample.key, bucket, pixels, text, meta)


def keep_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """`collate_fn` for `DataLoader(stream, batch_size=None)`: the batch is final already. The
    default (`default_convert`) walks and rebuilds every list and dict of every batch, the
    per-sample metadata included: about 3% of the stream's time, for an equal result."""
    return batch


@lru_cache(maxsize=4096)
def _nearest_bucket(size: tuple[int, int], buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """`nearest_bucket`, memoised: a pure function of the image size, computed once per size."""
    return nearest_bucket(size, buckets)


def make_batch(examples: Sequence[Example], tokenizer: Any = None) -> Batch:
    """Stack one bucket's examples into the batch dict the LightningModule consumes.

    Pixels are stacked by `default_collate`, which in a DataLoader worker writes the stack
    straight into shared memory (no second copy when the batch crosses to the main process).
    """
    captions = [e.caption for e in examples]
    batch: Batch = {
        "pixel_values": default_collate([e.pixels for e in examples]),
        "captions": captions,
        "keys": [e.key for e in examples],
        "meta": [e.meta for e in examples],
    }
    if tokenizer is not None:
        ids = tokenize(tokenizer, captions)
        batch["input_ids"] = ids.as_subclass(_ByValue) if get_worker_info() is not None else ids
    return batch


class _ByValue(torch.Tensor):
    """A small tensor that leaves a DataLoader worker as bytes inside the batch's pickle instead
    of as its own shared-memory segment (whose file descriptor the main process fetches in a
    round trip to the worker): token ids cost about 15 us per batch that way instead of 350 us,
    more on a busy machine. It arrives as a plain tensor; ops on it give plain tensors too."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return _tensor_from_bytes, (self.numpy().tobytes(), self.dtype, tuple(self.shape))


def _tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=dtype).view(shape)


def bucket_batches(
    examples: Iterator[Example], batch_size: int, *, keep_remainders: bool = False
) -> Iterator[list[Example]]:
    """Group examples by bucket; yield a batch when a bucket is full. Leftovers are dropped
    (training, as ED1) or yielded at the end in bucket order (validation)."""
    pending: dict[tuple[int, int], list[Example]] = {}
    for example in examples:
        group = pending.setdefault(example.bucket, [])
        group.append(example)
        if len(group) == batch_size:
            yield group
            pending[example.bucket] = []
    if keep_remainders:
        for bucket in sorted(pending):
            if pending[bucket]:
                yield pending[bucket]


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def caption_config(caption: CaptionConfig | Mapping[str, Any] | None) -> CaptionConfig:
    """A CaptionConfig from one, a mapping (Hydra keys like `_target_` ignored), or None."""
    if caption is None:
        return CaptionConfig()
    if isinstance(caption, CaptionConfig):
        return caption
    return CaptionConfig(**{k: v for k, v in dict(caption).items() if not k.startswith("_")})


class EpochPlannedStream(IterableDataset):
    """Epoch bookkeeping shared by the pixel and latent streams: the epoch, the batches per slot
    and the resume position. Subclasses set `categories`, `multiply_mode`, `seed`,
    `val_fraction`, `batch_size`, `rank`, `world_size` and `resume` ((epoch, batches consumed)
    or None). The epoch lives in shared memory, so `set_epoch` in the main process reaches
    persistent workers too."""

    def __init__(self) -> None:
        super().__init__()
        self._epoch: Any = _shared_int()

    @property
    def epoch(self) -> int:
        return self._epoch if isinstance(self._epoch, int) else int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration streams."""
        if isinstance(self._epoch, int):
            self._epoch = int(epoch)
        else:
            self._epoch.value = int(epoch)

    def epoch_size(self, epoch: int | None = None) -> int:
        """Planned draws in the epoch, all ranks together (held-out keys included)."""
        epoch = self.epoch if epoch is None else epoch
        return epoch_size(plan_epoch(self.categories, self.multiply_mode, self.seed, epoch))

    def approx_batches(self, epoch: int | None = None) -> int:
        """Planned training draws of the epoch in whole batches, all ranks together."""
        return int(self.epoch_size(epoch) * (1 - self.val_fraction)) // self.batch_size

    def batches_per_slot(self, slots: int, epoch: int | None = None) -> int:
        """The batches every slot (rank × worker) yields in the epoch (the module docstring's
        rule): a pure function of the plan, so all ranks agree without communicating."""
        return max(1, self.approx_batches(epoch) // slots)

    def slot_batches(
        self, examples: Callable[[int, int, int, int], Iterator[Example]]
    ) -> Iterator[tuple[int, list[Example]]]:
        """(slot, one-bucket batch) for this DataLoader worker: exactly `batches_per_slot`,
        less those consumed before a resume. `examples(epoch, slot, slots, p)` gives pass `p`
        of the slot's rendered draws; pass 1, 2, ... fill up a slot whose pass 0 runs dry."""
        epoch = self.epoch
        rank, world_size = process_rank(self.rank, self.world_size)
        worker, n_workers = dataloader_worker()
        consumed = self.resume[1] if self.resume is not None and self.resume[0] == epoch else 0
        logical, skip = resume_position(worker, n_workers, consumed)
        slot, slots = rank * n_workers + logical, world_size * n_workers

        def passes() -> Iterator[Example]:
            for p in count():
                empty = True
                for example in examples(epoch, slot, slots, p):
                    empty = False
                    yield example
                if empty:
                    raise ValueError(
                        f"epoch {epoch}: no training sample reaches slot {slot} of {slots} "
                        "(ranks × data.num_workers), so it cannot fill its batches. Use fewer "
                        "data.num_workers or devices, a lower data.val_fraction, or more data."
                    )

        groups = bucket_batches(passes(), self.batch_size)
        for group in islice(groups, skip, self.batches_per_slot(slots, epoch)):
            yield slot, group

    def __getstate__(self) -> dict[str, Any]:
        from multiprocessing.context import get_spawning_popen

        state = self.__dict__.copy()
        if get_spawning_popen() is None and not isinstance(self._epoch, int):
            state["_epoch"] = self.epoch  # plain copy outside worker start-up (e.g. deepcopy)
        return state


class TrainStream(EpochPlannedStream):
    """Training batches (dicts, one aspect bucket each), deterministic given (seed, epoch, rank,
    worker). Use with `DataLoader(stream, batch_size=None, collate_fn=keep_batch)` (plain
    `batch_size=None` works too, only slower)."""

    def __init__(
        self,
        shards: Sequence[str],
        manifest: Mapping[str, Any],
        *,
        resolution: int,
        batch_size: int,
        multiply_mode: str = "ed1",
        crop: str = "ed1",
        flip_p: float = 0.0,
        shuffle_buffer: int = 1000,
        val_fraction: float = 0.02,
        seed: int = 0,
        caption: CaptionConfig | Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: use at least 1")
        self.shards = list(shards)
        self.categories = manifest_categories(dict(manifest))
        self.buckets = bucket_table(resolution)
        self.batch_size, self.multiply_mode, self.crop = batch_size, multiply_mode, crop
        self.flip_p, self.shuffle_buffer, self.val_fraction = flip_p, shuffle_buffer, val_fraction
        self.seed, self.caption, self.tokenizer = seed, caption_config(caption), tokenizer
        self.rank, self.world_size = rank, world_size
        self.resume: tuple[int, int] | None = None  # (epoch, batches already consumed)
        self.skipped = SkipCounter()

    # -- iteration (each worker) -----------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        counter = self.skipped = SkipCounter()
        for slot, group in self.slot_batches(partial(self._examples, counter)):
            batch = make_batch(group, self.tokenizer)
            batch["skipped"] = dict(counter)
            batch["slot"] = slot
            yield batch

    def _examples(
        self, counter: SkipCounter, epoch: int, slot: int, slots: int, p: int
    ) -> Iterator[Example]:
        """Pass `p` of the slot's draws, rendered. Bad input is counted in pass 0 only."""
        counter = counter if p == 0 else SkipCounter()
        rng = random.Random(pass_seed("stream", self.seed, epoch, slot, p))
        draws = iter_draws(
            self.shards,
            self.categories,
            mode=self.multiply_mode,
            seed=self.seed,
            epoch=epoch,
            slot=slot,
            slots=slots,
            val_fraction=self.val_fraction,
            counter=counter,
        )
        return self._render_all(shuffle_copies(draws, self.shuffle_buffer, rng), rng, counter)

    def _render_all(
        self, copies: Iterator[Sample], rng: random.Random, counter: SkipCounter
    ) -> Iterator[Example]:
        for sample in copies:
            image = decode(sample, counter) if sample.data else None
            sample.pending -= 1
            if image is not None:
                yield render(
                    sample,
                    image,
                    self.buckets,
                    self.caption,
                    rng,
                    crop=self.crop,
                    flip_p=self.flip_p,
                )
            if sample.pending <= 0 or image is None:
                sample.release()  # a bad image is counted once, its other copies pass silently


def pass_seed(name: str, seed: int, epoch: int, slot: int, p: int) -> str:
    """The seed string of a slot's pass `p` in `epoch` (pass 0 keeps the original form)."""
    return f"{name}:{seed}:{epoch}:{slot}" + (f":pass{p}" if p else "")


def _shared_int() -> Any:
    """An int in shared memory that DataLoader workers inherit."""
    from multiprocessing import RawValue

    return RawValue("q", 0)


class ValidationDataset(IterableDataset):
    """Held-out samples only, in shard order: center crop, no flip, no caption dropout, captions
    seeded by key. Batches group one bucket; remainders are kept. Deterministic.

    Not split across ranks unless `rank`/`world_size` are given: every DDP rank validates the
    same batches, so all run the same number of validation steps (a rank without held-out
    samples would leave the others waiting in val/loss's all-reduce) and val/loss does not
    depend on the world size. `limit_val_batches` keeps the repeated work small."""

    def __init__(
        self,
        shards: Sequence[str],
        *,
        resolution: int,
        batch_size: int,
        val_fraction: float = 0.02,
        caption: CaptionConfig | Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.shards, self.buckets = list(shards), bucket_table(resolution)
        self.batch_size, self.val_fraction = batch_size, val_fraction
        self.caption, self.tokenizer = caption_config(caption), tokenizer
        self.rank, self.world_size = rank, world_size
        self.skipped = SkipCounter()

    def iter_examples(self) -> Iterator[Example]:
        """This slot's rendered held-out examples, in order."""
        slot, slots = worker_slot(self.rank, self.world_size)
        counter = self.skipped = SkipCounter()
        for sample in iter_samples(self.shards, slot, slots, counter):
            if not is_val_key(sample.key, self.val_fraction):
                continue
            image = decode(sample, counter)
            if image is None:
                continue
            rng = random.Random(f"val:{sample.key}")
            yield render(
                sample, image, self.buckets, self.caption, rng, crop="center", dropout=False
            )
            sample.release()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        groups = bucket_batches(self.iter_examples(), self.batch_size, keep_remainders=True)
        for group in groups:
            yield make_batch(group, self.tokenizer)
