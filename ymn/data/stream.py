"""The weighted, bucketed, captioned training stream (and the held-out validation set).

One loop for every sample source. Per epoch: plan the copies per category (`ymn.data.multiply`,
ED1 by default), shuffle the shard order, split shards (or, with fewer shards than slots,
samples) across ranks and dataloader workers, read samples sequentially from the source, emit
each one `draws_for_sample` times, mix the copies in a seeded shuffle buffer, let the source
render each copy (crop to the nearest aspect bucket, flip, caption), and group into one-bucket
batches. State is per category only, never per image. Sources: the packed shards' pixels
(`ymn.data.pixels.PixelSource`) and a latent cache (`ymn.data.latent_source.LatentSource`);
their settings travel in one `StreamConfig` (`ymn.data.sample_source`). Who reads which
shards: `ymn.data.slots`.

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
from collections.abc import Callable, Iterator, Sequence
from itertools import count, islice
from typing import Any

import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from ymn.data.batch import Batch
from ymn.data.decode import Sample, SkipCounter, is_val_key
from ymn.data.multiply import (
    copies_in_round,
    copy_offset,
    copy_rounds,
    draws_for_sample,
    epoch_size,
    plan_epoch,
)
from ymn.data.sample_source import Example, SampleSource, StreamConfig
from ymn.data.slots import (
    dataloader_worker,
    process_rank,
    resume_position,
    shard_order,
    worker_slot,
)
from ymn.data.tokenizer import tokenize
from ymn.reliability.rng import derive_seed

# ---------------------------------------------------------------------------------------------
# Draws: the epoch's plan for this slot, copies mixed in a shuffle buffer
# ---------------------------------------------------------------------------------------------


def iter_draws(
    source: SampleSource,
    config: StreamConfig,
    *,
    epoch: int = 0,
    slot: int = 0,
    slots: int = 1,
    counter: SkipCounter | None = None,
) -> Iterator[tuple[Sample, int]]:
    """(sample, copies) for each training sample this slot reads in `epoch` (copies > 0), in
    shard order, without decoding images: the draw plan, cheap enough to count 100k draws."""
    counter = SkipCounter() if counter is None else counter
    seed = config.seed
    plans = plan_epoch(source.categories, config.multiply_mode, seed, epoch)
    for sample in source.read(shard_order(source.shards, seed, epoch), slot, slots, counter):
        if is_val_key(sample.key, config.val_fraction):
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


def spread_over_rounds(
    read_round: Callable[[int], Iterator[tuple[Sample, int]]], rounds: int, seed: int, epoch: int
) -> Iterator[tuple[Sample, int]]:
    """Each sample's copies spread over the epoch's copy rounds
    (`ymn.data.multiply.copy_rounds`): `read_round(r)` reads the slot's draws once more, and a
    sample comes with its copies of that round."""
    for round_ in range(rounds):
        for sample, copies in read_round(round_):
            offset = copy_offset(seed, epoch, sample.key)
            if (in_round := copies_in_round(copies, round_, rounds, offset)) > 0:
                yield sample, in_round


def stream_order(
    source: SampleSource,
    config: StreamConfig,
    *,
    epoch: int,
    slot: int,
    slots: int,
    p: int = 0,
    counter: SkipCounter | None = None,
) -> Iterator[Sample]:
    """Pass `p` of a slot's samples in the order the stream renders them: copies spread over
    the rounds, then mixed by the seeded shuffle buffer. Bad input is counted in round 0 only."""

    def read_round(round_: int) -> Iterator[tuple[Sample, int]]:
        kept = counter if round_ == 0 else SkipCounter()
        return iter_draws(source, config, epoch=epoch, slot=slot, slots=slots, counter=kept)

    rounds = copy_rounds(plan_epoch(source.categories, config.multiply_mode, config.seed, epoch))
    rng = random.Random(pass_seed(source.seed_name, config.seed, epoch, slot, p))
    draws = spread_over_rounds(read_round, rounds, config.seed, epoch)
    return shuffle_copies(draws, config.shuffle_buffer, rng)


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
# Examples -> one-bucket batches
# ---------------------------------------------------------------------------------------------


def keep_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """`collate_fn` for `DataLoader(stream, batch_size=None)`: the batch is final already. The
    default (`default_convert`) walks and rebuilds every list and dict of every batch, the
    per-sample metadata included: about 3% of the stream's time, for an equal result."""
    return batch


def make_batch(
    examples: Sequence[Example], tokenizer: Any = None, key: str = "pixel_values"
) -> Batch:
    """Stack one bucket's examples into the batch dict the LightningModule consumes, the
    tensors under `key` (`pixel_values` or `latents`).

    Tensors are stacked by `default_collate`, which in a DataLoader worker writes the stack
    straight into shared memory (no second copy when the batch crosses to the main process).
    """
    captions = [e.caption for e in examples]
    batch: Batch = {
        key: default_collate([e.tensor for e in examples]),  # type: ignore[misc]
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


class TrainStream(IterableDataset):
    """Training batches (dicts, one aspect bucket each) from `source`, deterministic given
    (seed, epoch, rank, worker). Use with `DataLoader(stream, batch_size=None,
    collate_fn=keep_batch)` (plain `batch_size=None` works too, only slower). The epoch lives
    in shared memory, so `set_epoch` in the main process reaches persistent workers too;
    `resume` is (epoch, batches consumed) or None."""

    def __init__(
        self,
        source: SampleSource,
        config: StreamConfig,
        *,
        tokenizer: Any = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        source.check(config)
        self.source, self.config, self.tokenizer = source, config, tokenizer
        self.rank, self.world_size = rank, world_size
        self.resume: tuple[int, int] | None = None  # (epoch, batches already consumed)
        self.skipped = SkipCounter()
        self._epoch: Any = _shared_int()

    # -- what the plan and the preflight checks (`ymn.data.preflight`) read ----------------
    shards = property(lambda self: self.source.shards)
    categories = property(lambda self: self.source.categories)
    buckets = property(lambda self: self.config.buckets)
    multiply_mode = property(lambda self: self.config.multiply_mode)
    seed = property(lambda self: self.config.seed)
    val_fraction = property(lambda self: self.config.val_fraction)
    caption = property(lambda self: self.config.caption)

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
        return int(self.epoch_size(epoch) * (1 - self.val_fraction)) // self.config.batch_size

    def batches_per_slot(self, slots: int, epoch: int | None = None) -> int:
        """The batches every slot (rank × worker) yields in the epoch (the module docstring's
        rule): a pure function of the plan, so all ranks agree without communicating."""
        return max(1, self.approx_batches(epoch) // slots)

    # -- iteration (each worker) -----------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        counter = self.skipped = SkipCounter()
        for slot, group in self.slot_batches(counter):
            batch = make_batch(group, self.tokenizer, self.source.batch_key)
            batch["skipped"] = dict(counter)
            batch["slot"] = slot
            yield batch

    def slot_batches(self, counter: SkipCounter) -> Iterator[tuple[int, list[Example]]]:
        """(slot, one-bucket batch) for this DataLoader worker: exactly `batches_per_slot`,
        less those consumed before a resume. Pass 0 of the slot's draws comes first; pass 1,
        2, ... fill up a slot whose pass 0 runs dry. Bad input counts into `counter`."""
        epoch = self.epoch
        rank, world_size = process_rank(self.rank, self.world_size)
        worker, n_workers = dataloader_worker()
        consumed = self.resume[1] if self.resume is not None and self.resume[0] == epoch else 0
        logical, skip = resume_position(worker, n_workers, consumed)
        slot, slots = rank * n_workers + logical, world_size * n_workers

        def passes() -> Iterator[Example]:
            for p in count():
                empty = True
                for example in self._examples(counter, epoch, slot, slots, p):
                    empty = False
                    yield example
                if empty:
                    raise ValueError(
                        f"epoch {epoch}: no training sample reaches slot {slot} of {slots} "
                        "(ranks × data.num_workers), so it cannot fill its batches. Use fewer "
                        "data.num_workers or devices, a lower data.val_fraction, or more data."
                    )

        groups = bucket_batches(passes(), self.config.batch_size)
        for group in islice(groups, skip, self.batches_per_slot(slots, epoch)):
            yield slot, group

    def _examples(
        self, counter: SkipCounter, epoch: int, slot: int, slots: int, p: int
    ) -> Iterator[Example]:
        """Pass `p` of the slot's draws, rendered. Bad input is counted in pass 0 only."""
        counter = counter if p == 0 else SkipCounter()
        name, seed = self.source.seed_name, self.config.seed
        rng = random.Random(pass_seed(name, seed, epoch, slot, p) + ":render")
        noise = torch.Generator().manual_seed(derive_seed(name, seed, epoch, slot, p))
        order = stream_order(
            self.source, self.config, epoch=epoch, slot=slot, slots=slots, p=p, counter=counter
        )
        for sample in order:
            example = self.source.render(sample, self.config, rng, noise, counter, train=True)
            sample.pending -= 1
            if sample.pending <= 0 or example is None:
                sample.release()  # a bad image is counted once, its other copies pass silently
            if example is not None:
                yield example

    def __getstate__(self) -> dict[str, Any]:
        from multiprocessing.context import get_spawning_popen

        state = self.__dict__.copy()
        if get_spawning_popen() is None and not isinstance(self._epoch, int):
            state["_epoch"] = self.epoch  # plain copy outside worker start-up (e.g. deepcopy)
        return state


def pass_seed(name: str, seed: int, epoch: int, slot: int, p: int) -> str:
    """The seed string of a slot's pass `p` in `epoch` (pass 0 keeps the original form)."""
    return f"{name}:{seed}:{epoch}:{slot}" + (f":pass{p}" if p else "")


def _shared_int() -> Any:
    """An int in shared memory that DataLoader workers inherit."""
    from multiprocessing import RawValue

    return RawValue("q", 0)


class ValidationDataset(IterableDataset):
    """Held-out samples of `source` only, in shard order: center crop, no flip, no caption
    dropout, captions seeded by key, the posterior mean for latents. Batches group one bucket;
    remainders are kept. Deterministic.

    Not split across ranks unless `rank`/`world_size` are given: every DDP rank validates the
    same batches, so all run the same number of validation steps (a rank without held-out
    samples would leave the others waiting in val/loss's all-reduce) and val/loss does not
    depend on the world size. `limit_val_batches` keeps the repeated work small."""

    def __init__(
        self,
        source: SampleSource,
        config: StreamConfig,
        *,
        tokenizer: Any = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        source.check(config)
        self.source, self.config, self.tokenizer = source, config, tokenizer
        self.rank, self.world_size = rank, world_size
        self.skipped = SkipCounter()

    def iter_examples(self) -> Iterator[Example]:
        """This slot's rendered held-out examples, in order."""
        slot, slots = worker_slot(self.rank, self.world_size)
        counter = self.skipped = SkipCounter()
        for sample in self.source.read(self.source.shards, slot, slots, counter):
            if not is_val_key(sample.key, self.config.val_fraction):
                continue
            rng = random.Random(f"val:{sample.key}")
            example = self.source.render(sample, self.config, rng, None, counter, train=False)
            sample.release()
            if example is not None:
                yield example

    def __iter__(self) -> Iterator[dict[str, Any]]:
        groups = bucket_batches(self.iter_examples(), self.config.batch_size, keep_remainders=True)
        for group in groups:
            yield make_batch(group, self.tokenizer, self.source.batch_key)
