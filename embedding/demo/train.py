"""Train the `demo` model version: a small open_clip CLIP, contrastive on synthetic shapes and their captions.

Images come from `embedding.demo.synthetic`, pass through a real JPEG/PNG round trip and the job's own
decoder (`embedding.media.image.decode`), so training sees exactly what inference sees. Captions are drawn
from every template of every language in `embedding.demo.captions`. Each batch holds every colour x shape
class at most once: two images of one class in a batch would be false negatives for open_clip's `ClipLoss`.

The run is deterministic for a seed and a step count; `minutes` is only a safety cap on wall time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import platform
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

from embedding.demo import captions, quality, synthetic
from embedding.media.resize import Preprocess
from embedding.models.registry import DEMO_ARCHITECTURE, register_architectures

log = logging.getLogger(__name__)

DEFAULT_SEED = 314_159  # not 0: sample data and tests use small seeds, and should be unseen images
WEIGHTS_NAME = "demo.safetensors"
METADATA_NAME = "demo.json"


@dataclass
class TrainConfig:
    out: Path = Path(__file__).parent / "weights"
    seed: int = DEFAULT_SEED
    steps: int = 3000
    minutes: float = 17.0  # wall-time cap on rendering + training; the lr schedule follows `steps`
    batch_size: int = 48  # at most one image per class, so at most len(CLASSES)
    pool_size: int = 9_600  # distinct training images, rendered once (flipped at random on reuse)
    max_side: int = 1024  # the sample data's range (64 to 1024 px), as the job will see
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 200
    workers: int = 2  # processes rendering the image pool
    measure_quality: bool = True  # skipped anyway for smoke runs under MIN_QUALITY_STEPS
    architecture: str = DEMO_ARCHITECTURE
    log_every: int = 250
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in demo.json as given


MIN_QUALITY_STEPS = 200


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and make torch refuse nondeterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def render_pool(
    cfg: TrainConfig, prep: Preprocess, count: int
) -> tuple[np.ndarray, list[synthetic.ImageSpec]]:
    """`count` training images as uint8 (N, H, W, 3), decoded the way the job decodes, and their specs."""
    specs = synthetic.balanced_specs(count, cfg.seed, max_side=cfg.max_side)
    render = partial(varied_pixels, prep=prep)
    if cfg.workers > 1 and count >= 1000:
        # spawn, not fork: the parent has torch loaded; results keep the order of `specs`.
        with multiprocessing.get_context("spawn").Pool(cfg.workers) as pool:
            pixels = pool.map(render, specs, chunksize=256)
    else:
        pixels = [render(spec) for spec in specs]
    return np.stack(pixels), specs


# JPEG decoding at reduced DCT scale (images.py's `draft_gap`) resamples a little differently from a full
# decode; a model that saw only one path would notice. Pool images take one of these paths each.
DRAFT_GAPS = (0.0, 1.0, 2.0, 4.0)


def varied_pixels(spec: synthetic.ImageSpec, prep: Preprocess) -> np.ndarray:
    """`quality.spec_pixels` through one of the decode paths the job may take (chosen by the spec)."""
    gap = DRAFT_GAPS[spec.noise_seed % len(DRAFT_GAPS)]
    return quality.spec_pixels(spec, dataclasses.replace(prep, draft_gap=gap))


def soften(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur half of a batch slightly (sigma 0.3-0.8 px) and add faint noise: robustness to resampling."""
    n = x.shape[0]
    sigma = 0.3 + 0.5 * torch.rand(n, generator=generator)
    taps = torch.arange(-2, 3, dtype=torch.float32)
    kernels = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)  # (n, 5)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    rows = sum(kernels[:, i].view(n, 1, 1, 1) * padded[:, :, :, i : i + x.shape[3]] for i in range(5))
    assert isinstance(rows, torch.Tensor)  # a sum of five tensors
    blurred = sum(kernels[:, i].view(n, 1, 1, 1) * rows[:, :, i : i + x.shape[2], :] for i in range(5))
    pick = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator) * (2 / 255)
    return torch.where(pick, blurred, x) + noise


def class_batches(labels: list[int], batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of pool indices in which no class appears twice.

    Each epoch shuffles every class's images and deals the j-th image of each class into batch j, so every
    image is seen once per epoch and batches mix differently every epoch.
    """
    by_class = [np.flatnonzero(np.asarray(labels) == k) for k in range(len(synthetic.CLASSES))]
    rounds = min(len(ix) for ix in by_class)
    while True:
        dealt = np.stack([rng.permutation(ix)[:rounds] for ix in by_class], axis=1)  # (rounds, classes)
        for row in dealt[rng.permutation(rounds)]:
            yield np.sort(rng.choice(row, size=batch_size, replace=False))


def pick_captions(specs: list[synthetic.ImageSpec], rng: random.Random) -> list[str]:
    """One caption per image: a random language, then a random template of that language."""
    out = []
    for spec in specs:
        by_lang = captions.all_captions(spec.colour, spec.shape, spec.background)
        out.append(rng.choice(by_lang[rng.choice(captions.LANGUAGES)]))
    return out


def to_input(pixels: np.ndarray, prep: Preprocess, augment: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) to the normalised NCHW float batch the job feeds the model (+ training noise)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255
    if augment is not None:
        x = soften(x, augment)
    return (x - torch.tensor(prep.mean).view(1, 3, 1, 1)) / torch.tensor(prep.std).view(1, 3, 1, 1)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases, norms and the logit scale (as open_clip), nor on embedding tables."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        exempt = p.ndim < 2 or any(k in name for k in ("bn", "ln", "bias", "embedding", "logit_scale"))
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero at `cfg.steps`."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_weights(model: torch.nn.Module, path: Path) -> str:
    """Write the state dict as fp16 safetensors (integer buffers kept as they are); returns its sha256."""
    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors writes a dict of several in no fixed order, changing the sha256.
    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o644)  # safetensors creates the file owner-only; the job's workers may run as another user
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Render the pool, train, save weights and metadata to `cfg.out`; returns the metadata.

    Sets torch's thread count and deterministic mode for the process.
    """
    if cfg.seed == quality.EVAL_SEED:
        raise ValueError(f"seed {cfg.seed} is reserved for the quality evaluation")
    if not 1 <= cfg.batch_size <= len(synthetic.CLASSES):
        raise ValueError(f"batch size must be 1..{len(synthetic.CLASSES)} (one image per class at most)")
    start = time.monotonic()
    torch.set_num_threads(2)  # this machine's cores; also keeps float reductions in a fixed order
    seed_everything(cfg.seed)
    register_architectures()

    model = open_clip.create_model(cfg.architecture)
    tokenizer = open_clip.get_tokenizer(cfg.architecture)
    prep = quality.model_preprocess(model)
    # Smoke runs need only a few images; full runs reuse each image many times.
    per_class = min(cfg.pool_size, cfg.steps * cfg.batch_size) // len(synthetic.CLASSES) + 1
    pixels, specs = render_pool(cfg, prep, per_class * len(synthetic.CLASSES))
    labels = [synthetic.CLASSES.index((s.colour, s.shape)) for s in specs]
    log.info("rendered %d training images in %.0f s", len(specs), time.monotonic() - start)

    # fused: one kernel per step instead of several passes over the (mostly unused) 49408-row token table.
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=True
    )
    loss_fn = open_clip.loss.ClipLoss()
    np_rng = np.random.default_rng([cfg.seed, 1])
    text_rng = random.Random(f"captions-{cfg.seed}")
    torch_rng = torch.Generator().manual_seed(cfg.seed)
    batches = class_batches(labels, cfg.batch_size, np_rng)
    model.train()
    train_start, step, running = time.monotonic(), 0, 0.0
    while step < cfg.steps and time.monotonic() - start < cfg.minutes * 60:
        index = next(batches)
        batch = pixels[index]
        flip = np_rng.random(len(index)) < 0.5  # every shape is left-right symmetric up to its rotation
        batch[flip] = batch[flip, :, ::-1]
        texts = tokenizer(pick_captions([specs[i] for i in index], text_rng))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg)
        images = to_input(batch, prep, augment=torch_rng)
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP's clamp: a temperature under 1/100 destabilises training
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        running += loss.item()
        if step % cfg.log_every == 0 or step == cfg.steps:
            n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            log.info(
                "step %d/%d loss %.4f scale %.1f elapsed %.0f s",
                step,
                cfg.steps,
                running / n,
                model.logit_scale.exp().item(),
                time.monotonic() - start,
            )
            running = 0.0
    train_minutes = (time.monotonic() - train_start) / 60
    if step < cfg.steps:
        log.warning("stopped at step %d of %d: the %.1f-minute cap was reached", step, cfg.steps, cfg.minutes)

    weights = Path(cfg.out) / WEIGHTS_NAME
    sha256 = save_weights(model, weights)
    meta: dict[str, Any] = {
        "architecture": cfg.architecture,
        "weights": WEIGHTS_NAME,
        "sha256": sha256,
        "size_bytes": weights.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": cfg.seed,
        "steps": step,
        "steps_planned": cfg.steps,
        "batch_size": cfg.batch_size,
        "training_images": len(specs),
        "image_size": list(prep.size),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "extra")},
        "training_minutes": round(train_minutes, 2),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        **cfg.extra,
    }
    if cfg.measure_quality and step >= MIN_QUALITY_STEPS:
        # Measured on the saved fp16 file, loaded the way the job loads it.
        shipped = open_clip.create_model(cfg.architecture, pretrained=str(weights))
        result = quality.measure_model(shipped, tokenizer, prep)
        log.info("quality (seed %d): %s", quality.EVAL_SEED, quality.summary(result))
        meta["quality"] = {
            "eval_seed": quality.EVAL_SEED,
            "gallery_size": result["gallery_size"],
            "precision_at_10": {k: round(v, 4) for k, v in result["precision_at_10"].items()},
            "min_query_precision_at_10": {k: min(v.values()) for k, v in result["per_query"].items()},
            "image_to_image": round(result["image_to_image"], 4),
            "passed": result["passed"],
        }
    meta["total_minutes"] = round((time.monotonic() - start) / 60, 2)
    (Path(cfg.out) / METADATA_NAME).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta
