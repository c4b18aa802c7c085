"""Distillation: a smaller student (fewer layers, narrower FFN) initialized from the teacher, trained on
unlabeled text against the recipe's uncompressed model.

Causal LMs and classifiers learn the teacher's temperature-softened distribution (KL x T^2); encoders
learn its sentence embeddings (cosine or MSE), optionally also its hidden states at the kept layers.
With no layers or FFN removed, the same pass is recovery training after pruning.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from optimizer.errors import UserError
from optimizer.passes.base import Pass, PassConfig, PassContext

if TYPE_CHECKING:
    import torch

    from optimizer import tasks
    from optimizer.runtimes import Candidate, TorchCandidate

log = logging.getLogger(__name__)
CHECKPOINT = "distill-state.pt"


class DistillConfig(PassConfig):
    num_layers: int | None = Field(default=None, ge=1, description="keep this many blocks, evenly spaced")
    keep_layers: list[int] | None = Field(default=None, description="keep exactly these block indices")
    ffn_ratio: float = Field(default=1.0, gt=0, le=1, description="FFN width kept (most important neurons)")
    steps: int = Field(default=300, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    batch_size: int = Field(default=16, ge=1)
    max_length: int = Field(default=128, ge=8)
    warmup_steps: int = Field(default=20, ge=0)
    max_seconds: float | None = Field(default=None, gt=0, description="wall-clock budget; stops early, keeps the result")
    temperature: float = Field(default=2.0, gt=0)
    embedding_loss: Literal["cosine", "mse"] = "cosine"
    hidden_weight: float = Field(default=0.0, ge=0, description="encoders: weight of hidden-state MSE at kept layers")
    checkpoint_dir: str | None = Field(default=None, description="save here every save_every steps; resume from it")
    save_every: int = Field(default=50, ge=1)

    @model_validator(mode="after")
    def _one_layer_choice(self) -> DistillConfig:
        if self.num_layers is not None and self.keep_layers is not None:
            raise ValueError("give num_layers or keep_layers, not both")
        return self


def spaced_layers(total: int, keep: int) -> list[int]:
    """`keep` indices spread over `total` blocks, always including the first and the last."""
    if keep >= total:
        return list(range(total))
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def train_texts(ctx: PassContext) -> list[str]:
    from optimizer.data import stdlib_split

    data = ctx.train or ctx.calibration
    return data.all_texts() if data is not None else [e.text for e in stdlib_split("train")]


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Distill(Pass):
    name = "distill"
    family = "distillation"
    Config = DistillConfig

    def _shrink(self, student: TorchCandidate, ctx: PassContext) -> list[int]:
        """Cut the student down; returns, per student block, the teacher block it came from."""
        from optimizer import surgery
        from optimizer.passes.calibration import batches, input_norms

        c = self.config
        total = len(surgery.blocks(student.module))
        kept = list(range(total))
        if c.ffn_ratio < 1:
            bl = surgery.blocks(student.module)
            width = bl[0].ffn_out.in_features
            keep_n = max(8, int(width * c.ffn_ratio) // 8 * 8)
            norms = input_norms(student, [b.ffn_out for b in bl], batches(student, ctx, 64))
            surgery.shrink_ffn(
                student.module,
                [(n * b.ffn_out.weight.float().norm(dim=0).cpu()).topk(keep_n).indices for b, n in zip(bl, norms, strict=False)],
            )
        if c.keep_layers is not None or c.num_layers is not None:
            kept = sorted(set(c.keep_layers)) if c.keep_layers is not None else spaced_layers(total, c.num_layers or total)
            surgery.keep_layers(student.module, kept)
        return kept

    def _loss(self, student: TorchCandidate, teacher: TorchCandidate, b: tasks.Batch, kept: list[int]) -> torch.Tensor:
        import torch

        from optimizer import tasks

        c = self.config
        ids, mask = b.input_ids.to(student.device), b.attention_mask.to(student.device)
        want_hidden = student.task == "embedding" and c.hidden_weight > 0
        with torch.no_grad():
            t_out = teacher.module(input_ids=ids, attention_mask=mask, output_hidden_states=want_hidden)
        s_out = student.module(input_ids=ids, attention_mask=mask, output_hidden_states=want_hidden)
        if student.task == "embedding":
            info = student.info
            t = tasks.pool(t_out.last_hidden_state.float(), mask, info.pooling)
            s = tasks.pool(s_out.last_hidden_state.float(), mask, info.pooling)
            if c.embedding_loss == "cosine":
                loss = (1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)).mean()
            else:
                loss = torch.nn.functional.mse_loss(s, t)
            if want_hidden:
                keep = mask.bool()
                pairs = [(s_out.hidden_states[i + 1], t_out.hidden_states[k + 1]) for i, k in enumerate(kept)]
                loss = loss + c.hidden_weight * sum(torch.nn.functional.mse_loss(sh[keep], th[keep]) for sh, th in pairs) / len(
                    pairs
                )
            return loss
        T = c.temperature
        s_logits, t_logits = s_out.logits.float(), t_out.logits.float()
        if student.task == "causal-lm":
            keep = mask.bool()
            s_logits, t_logits = s_logits[keep], t_logits[keep]
        kl = torch.nn.functional.kl_div(
            torch.log_softmax(s_logits / T, -1), torch.log_softmax(t_logits / T, -1), log_target=True, reduction="batchmean"
        )
        return kl * T * T

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        import numpy as np
        import torch
        from tqdm.auto import tqdm

        from optimizer import surgery, tasks
        from optimizer.runtimes import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        if ctx.baseline is None:
            raise RuntimeError("distill needs the pipeline's baseline loader in PassContext.baseline")
        c = self.config
        _seed(ctx.seed)
        student = candidate
        student.module.float()
        kept = self._shrink(student, ctx)
        teacher = ctx.baseline()
        teacher.module.float().eval()
        total = len(surgery.blocks(teacher.module))
        texts = train_texts(ctx)
        if len(texts) < c.batch_size:
            raise UserError(
                f"distill has {len(texts)} training texts, fewer than one batch of {c.batch_size}",
                "give data.train more text, or lower batch_size",
            )
        opt = torch.optim.AdamW([p for p in student.module.parameters() if p.requires_grad], lr=c.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / max(1, c.warmup_steps)) * max(0.0, 1 - s / c.steps)
        )
        step = 0
        ckpt = Path(c.checkpoint_dir) / CHECKPOINT if c.checkpoint_dir else None
        if ckpt is not None and ckpt.is_file():
            state = torch.load(ckpt, weights_only=False)
            if state["kept"] != kept or state["config"] != c.model_dump():
                raise UserError(
                    f"checkpoint {ckpt} was written with other distill settings",
                    "use a new checkpoint_dir, or the settings it was written with",
                )
            student.module.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            step = state["step"]
            torch.set_rng_state(state["rng"])
            log.info("resumed distillation at step %d from %s", step, ckpt)
        rng = random.Random(ctx.seed + step)
        student.module.train()
        start = time.monotonic()
        bar = tqdm(total=c.steps, initial=step, desc="distill", unit="step", leave=False)
        losses: list[float] = []
        stopped_early = False
        try:
            while step < c.steps:
                if c.max_seconds is not None and time.monotonic() - start > c.max_seconds:
                    stopped_early = True
                    break
                batch_texts = rng.sample(texts, c.batch_size)
                b = tasks.make_batches(student, batch_texts, c.batch_size, max_length=c.max_length, sort=False)[0]
                loss = self._loss(student, teacher, b, kept)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.module.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                if ckpt is not None and (step % c.save_every == 0 or step == c.steps):
                    ckpt.parent.mkdir(parents=True, exist_ok=True)
                    tmp = ckpt.with_suffix(".tmp")
                    torch.save(
                        {
                            "step": step,
                            "kept": kept,
                            "config": c.model_dump(),
                            "model": student.module.state_dict(),
                            "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(),
                            "rng": torch.get_rng_state(),
                        },
                        tmp,
                    )
                    tmp.replace(ckpt)
        finally:
            bar.close()
            student.module.eval()
        del teacher
        first = np.mean(losses[:10]) if losses else float("nan")
        last = np.mean(losses[-10:]) if losses else float("nan")
        student.notes.append(
            f"distill: {len(kept)} of {total} blocks kept "
            f"({kept}), {step} steps, loss {first:.4f} -> {last:.4f}"
            + (f"; stopped at the {c.max_seconds:g} s budget" if stopped_early else "")
        )
        return student
