"""Who reads what: (rank, dataloader worker) slots, each slot's share of the shards, the
epoch's shard order and where a resumed worker picks up."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import torch
from torch.utils.data import get_worker_info

T = TypeVar("T")


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


def slot_share(
    shards: Sequence[str], slot: int, slots: int, read: Callable[[str], Iterable[T]]
) -> Iterator[tuple[str, T]]:
    """(shard, item) for this slot: whole shards (round-robin) when there are at least as many
    shards as slots, else every `slots`-th item of all shards. No item goes to two slots."""
    by_shard = len(shards) >= slots
    index = 0
    for shard in shards[slot::slots] if by_shard else shards:
        for item in read(shard):
            take = by_shard or index % slots == slot
            index += 1  # counted before the item is parsed, so every slot numbers items alike
            if take:
                yield shard, item
