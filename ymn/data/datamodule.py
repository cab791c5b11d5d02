"""`YmnDataModule`: a sample source → the weighted bucketed training stream and the val set.

Built from the Hydra group `data` (see ymn/conf/data/*.yaml), whose stream keys become one
`StreamConfig`. `setup` builds both datasets the same way for every source: the packed shards'
pixels here, a latent cache in `ymn.data.latents.LatentDataModule` (which only overrides
`sample_source` and `prepare_data`). `prepare_data()` can build the demo's synthetic shards
(ymn-synth + ymn-pack) when they do not exist yet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from lightning import LightningDataModule
from torch.utils.data import DataLoader

from ymn.config_values import plain
from ymn.data.captions import CaptionConfig
from ymn.data.decode import MANIFEST, is_url, resolve_shards
from ymn.data.loss_scales import check_loss_scale_tree
from ymn.data.pixels import PixelSource
from ymn.data.sample_source import SampleSource, StreamConfig
from ymn.data.slots import process_rank
from ymn.data.stream import TrainStream, ValidationDataset, keep_batch

log = logging.getLogger(__name__)


class EpochDataLoader(DataLoader):
    """A DataLoader that tells its `TrainStream` which epoch each new iteration is."""

    def __init__(self, dataset: TrainStream, epoch_fn: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self.epoch_fn = epoch_fn

    def __iter__(self) -> Iterator:
        self.dataset.set_epoch(self.epoch_fn())
        return super().__iter__()


class YmnDataModule(LightningDataModule):
    """Weighted, bucketed, captioned batches from webdataset shards made by `ymn-pack`."""

    def __init__(
        self,
        shards: str,
        resolution: int,
        batch_size: int,
        num_workers: int = 0,
        multiply_mode: str = "ed1",
        crop: str = "ed1",
        flip_p: float = 0.0,
        shuffle_buffer: int = 1000,
        val_fraction: float = 0.02,
        seed: int = 0,
        caption: CaptionConfig | Mapping[str, Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        val_batch_size: int | None = None,
        manifest: str | None = None,
        prepare: Mapping[str, Any] | None = None,
        loss_scale: Mapping[str, float] | None = None,
        tokenizer: Any = None,
    ) -> None:
        """`tokenizer`: the model's; batches then carry `input_ids` (B, 77) and setup checks
        caption lengths (`ymn-train` passes it; None leaves both out)."""
        super().__init__()
        self.shards, self.manifest_file = str(shards), manifest
        self.config = StreamConfig(
            resolution=resolution,
            batch_size=batch_size,
            multiply_mode=multiply_mode,
            crop=crop,
            flip_p=flip_p,
            shuffle_buffer=shuffle_buffer,
            val_fraction=val_fraction,
            seed=seed,
            caption=plain(caption),
        )
        self.num_workers, self.val_batch_size = num_workers, val_batch_size or batch_size
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.prepare = plain(prepare)
        self.loss_scale = check_loss_scale_tree(plain(loss_scale) or {})  # category -> weight
        self.tokenizer = tokenizer
        self.manifest: dict[str, Any] | None = None
        self.preflight: Any = None  # the PreflightReport (pixel shards only)
        self.train_stream: TrainStream | None = None
        self.val_set: ValidationDataset | None = None
        self._epoch, self._resume = 0, None
        # (epoch, slot) -> that worker's latest counts in that epoch (each epoch counts anew)
        self.skipped: dict[tuple[int, int], dict[str, int]] = {}
        self._logged_skips = 0  # the `data/skipped` total last logged

    # -- set-up ------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path | None:
        """Where the manifest is (beside the shards unless `manifest` was given); None when it
        is read from a URL."""
        if self.manifest_file:
            return None if is_url(self.manifest_file) else Path(self.manifest_file)
        if is_url(self.shards):
            return None
        base = Path(self.shards)
        return (
            base / MANIFEST if not any(c in self.shards for c in "{*?[") else base.parent / MANIFEST
        )

    def prepare_data(self) -> None:
        """With `prepare`, build synthetic shards (ymn-synth + ymn-pack) if they are missing.
        `prepare.layout: face_cell` packs the images laid out by face cell
        (`ymn.data.cell_layout`, beside the images), so the tree's weights balance cells."""
        if not self.prepare or self.manifest_path is None or self.manifest_path.is_file():
            return
        from ymn.data.balance import weights_from_category_tree
        from ymn.data.pack import pack_folder
        from ymn.data.synthetic import generate_dataset

        root = Path(self.prepare.get("root") or Path(self.shards).parent / "images")
        synth = dict(self.prepare.get("synth") or {})
        if synth and not (root / "synth_info.json").is_file():
            log.info("generating %s synthetic images in %s", synth.get("n"), root)
            generate_dataset(root, **synth)
        if not root.is_dir():
            return  # nothing to pack: setup() names the missing shards and the fix
        root = self._laid_out(root)
        tree = self.prepare.get("tree") or {}
        rows = weights_from_category_tree(tree, root) if tree else None
        pack = dict(self.prepare.get("pack") or {})
        log.info("packing %s into %s", root, self.shards)
        pack_folder(root, Path(self.shards), weights=rows, **pack)

    def _laid_out(self, root: Path) -> Path:
        """The folder to pack: `root` itself, or its face-cell layout (`prepare.layout`)."""
        layout = self.prepare.get("layout")
        if layout is None:
            return root
        if layout != "face_cell":
            raise ValueError(f"data.prepare.layout={layout!r}: expected null or face_cell")
        from ymn.data.cell_layout import cell_histogram, layout_by_cell

        cells = root.with_name(root.name + "_by_face_cell")
        counts = layout_by_cell(root, cells)
        log.info("face-cell layout in %s: images per cell %s", cells, cell_histogram(counts))
        return cells

    def sample_source(self) -> SampleSource:
        """Where batches come from: the packed shards' pixels. Resolving the shards fails with a
        hint when none exist."""
        return PixelSource(*resolve_shards(self.shards, self.manifest_file))

    def setup(self, stage: str | None = None) -> None:
        """Open the sample source and build the training stream and the validation set on it
        (each refuses a source that cannot serve the config)."""
        if self.train_stream is not None:
            return
        source = self.sample_source()
        self.manifest = source.manifest
        self.train_stream = TrainStream(source, self.config, tokenizer=self.tokenizer)
        val_config = replace(self.config, batch_size=self.val_batch_size)
        self.val_set = ValidationDataset(source, val_config, tokenizer=self.tokenizer)
        stream = self.train_stream
        log.info(
            "data: %d shards, %d images in %d categories; epoch 0 = %d draws (~%d batches of %d)",
            len(source.shards),
            self.manifest.get("total_images", 0),
            len(stream.categories),
            stream.epoch_size(0),
            stream.approx_batches(0),
            self.config.batch_size,
        )
        if self.manifest.get("skipped"):
            log.warning("%d images were skipped at pack time", len(self.manifest["skipped"]))
        self._warn_if_packed_by_folder()
        if isinstance(source, PixelSource) and not is_url(self.shards):  # they read local tars
            from ymn.data.preflight import run_preflight  # ED1 drops, caption lengths, shards

            self.preflight = run_preflight(self.train_stream, self.manifest)

    def _warn_if_packed_by_folder(self) -> None:
        """Shards packed folder by folder (`ymn-pack --folder-order`, or before ymn-pack packed
        in a permutation) make the stream serve one category for hundreds of steps."""
        path = self.manifest_path
        if path is None or not path.is_file():
            return
        manifest = json.loads(path.read_text())
        shuffle_seed = manifest.get("weights", {}).get("shuffle_seed")
        if len(manifest.get("shards", [])) > 1 and shuffle_seed is None:
            log.warning(
                "%s: shards packed folder by folder; the stream reads them in turn, so training "
                "sees one category at a time for long stretches. Re-pack with `ymn-pack ROOT OUT "
                "--force` (a seeded permutation) or delete them to let prepare re-pack.",
                self.shards,
            )

    # -- loaders ---------------------------------------------------------------------------
    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "collate_fn": keep_batch,  # batches are already collated by the stream
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
        }

    def train_dataloader(self) -> DataLoader:
        """Batches come from the stream itself (`batch_size=None`)."""
        self.setup("fit")
        self.train_stream.resume = self._resume
        return EpochDataLoader(self.train_stream, self._current_epoch, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        """Held-out keys, center crop, no dropout, fixed order; one bucket per batch."""
        self.setup("validate")
        return DataLoader(self.val_set, batch_size=None, **self._loader_kwargs())

    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        self._epoch = int(trainer.current_epoch) if trainer is not None else self._epoch
        return self._epoch

    # -- monitoring and resume -------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Take the skip counters off each training batch (a batch is the one channel back from
        a worker process) and log `data/skipped` when the total changes."""
        if isinstance(batch, dict) and "skipped" in batch:
            slot = int(batch.pop("slot", 0))
            self.skipped[(self._epoch, slot)] = dict(batch.pop("skipped"))
            self._log_skipped()
        return batch

    def _log_skipped(self) -> None:
        trainer = getattr(self, "trainer", None)
        total = sum(self.skipped_total.values())
        if trainer is None or total == self._logged_skips:
            return
        self._logged_skips = total
        for logger in trainer.loggers:  # rank 0's loggers write; the others are no-ops
            logger.log_metrics({"data/skipped": float(total)}, step=trainer.global_step)

    @property
    def skipped_total(self) -> dict[str, int]:
        """Skipped inputs by reason over all workers and epochs so far (log as `data/skipped`):
        an epoch that ends early no longer hides what an earlier epoch read."""
        total: dict[str, int] = {}
        for counts in self.skipped.values():
            for reason, n in counts.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def state_dict(self) -> dict[str, Any]:
        """(epoch, batches consumed in it) so a resume can skip ahead deterministically, and
        the settings that decide which batch comes next (a resume must match them)."""
        trainer = getattr(self, "trainer", None)
        position = {"epoch": self._epoch, "batches_consumed": 0}
        if trainer is not None:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            position = {"epoch": int(trainer.current_epoch), "batches_consumed": int(done)}
        return {**position, **self._stream_settings()}

    def _stream_settings(self) -> dict[str, int]:
        trainer = getattr(self, "trainer", None)
        world_size = trainer.world_size if trainer is not None else process_rank()[1]
        return {
            "num_workers": self.num_workers,
            "batch_size": self.config.batch_size,
            "world_size": int(world_size),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume: the next iteration of `epoch` skips the batches already consumed. Refused
        when a setting that decides the batch order changed (see `_check_same_stream`)."""
        self._check_same_stream(state_dict)
        self._epoch = int(state_dict.get("epoch", 0))
        self._resume = (self._epoch, int(state_dict.get("batches_consumed", 0)))
        if self.train_stream is not None:
            self.train_stream.resume = self._resume

    def _check_same_stream(self, saved: Mapping[str, Any]) -> None:
        """Each slot's share, batch count and resume position depend on the workers, the batch
        size and the world size: with any of them changed the resumed run would not be the one
        that was saved, so it stops here (checkpoints from before these were recorded pass)."""
        names = {
            "num_workers": "data.num_workers",
            "batch_size": "data.batch_size",
            "world_size": "the world size (trainer.devices × trainer.num_nodes)",
        }
        for key, now in self._stream_settings().items():
            if key in saved and int(saved[key]) != now:
                raise ValueError(
                    f"ckpt_path: the checkpoint was saved with {names[key]}={saved[key]}, this "
                    f"run has {now}. A resume continues the saved data stream exactly only with "
                    f"the same value: set it back to {saved[key]}, or start a new run from these "
                    "weights with init_from=RUN_DIR."
                )
