"""PPOModule: the RLHF baseline of the DPO paper — PPO on the KL-penalised reward — in Lightning (manual optimization).

    Prompts [B] ─► sample π (one response each) ─► labeller: r(x, y) [B] (− missing-EOS penalty)
      ─► no_grad: log π_old, log π_ref, V  per response token            [S, T] (right-aligned rows, mask)
      ─► rewards r_t = −β_KL·(log π_old − log π_ref) (+ r(x, y) at the last token)        kl_penalised_rewards
      ─► advantages, returns = GAE(γ, λ) (whitened advantages)                             gae, whiten
      ─► ppo_epochs × minibatches of `mini_batch_size` responses:
             loss = clipped policy loss + value_coef · clipped value loss ─► backward ─► optimizer step
      ─► the KL coefficient follows the measured KL (adaptive) or stays fixed

The value head is a linear layer on the policy's last hidden state (shared body, as the RLHF recipes of Ziegler et
al. 2019 and TRL's first PPO trainer), zero-initialised: V_t is read at the state that generates token t. The
reference π_ref is held by the run's reference strategy (`model`: a frozen copy of the start; `lora`: the adapters
turned off). PPO-GT is PPO whose sequence reward is the task's ground truth (`labeller=reward`); PPO proper uses a
reward model trained on the preference data (`labeller=reward_model`), as in the paper.

Every Lightning step is one rollout and `ppo_epochs × ⌈B / mini_batch_size⌉` optimizer steps (`trainer.max_steps`
counts optimizer steps). The minibatch order is drawn from a generator seeded by the rollout number, and sampling
draws with `sampling.seed + rollout × W + rank`: a resumed run continues exactly. Gradients are clipped to
`trainer.gradient_clip_val` by the run's divergence guard, as in DPO.

Logged each rollout: `train/reward` (the sequence reward, after the missing-EOS penalty), `train/kl` (Σ_t log-ratio
per response, mean), `train/kl_coef`, `train/entropy` (mean token entropy of π on its samples), `train/clip_fraction`,
`train/approx_kl`, `train/policy_loss`, `train/value_loss`, `train/value_clip_fraction`, `train/explained_variance`,
`train/response_tokens`, `train/rollout/tokens_per_s`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import torch

from dpo_lightning.data.collate import Batch, Collate, collate_function
from dpo_lightning.data.prompts import Prompts
from dpo_lightning.data.tokenize import TokenizedRanking
from dpo_lightning.errors import RunError
from dpo_lightning.eval.labellers import Labeller
from dpo_lightning.eval.sampling import SamplingSettings, completion_text, sample_completions, truncated
from dpo_lightning.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_penalised_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)
from dpo_lightning.models.layouts import batch_for
from dpo_lightning.models.logprobs import decoder_hidden, response_logprobs, token_logprobs
from dpo_lightning.online.module import CountsRollouts
from dpo_lightning.online.settings import PPOSettings
from dpo_lightning.training.module import DPOLitModule
from dpo_lightning.training.optim import optimizer_with_warmup


def as_rows(flat: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] per-token values (targets sequence by sequence, each in token order) → ([S, T] right-padded rows with 0
    on padding, [S, T] bool mask); T = the longest response."""
    counts = torch.bincount(batch.target_seqs, minlength=batch.num_sequences)  # [S]
    starts = counts.cumsum(0) - counts  # [S] each sequence's first target
    columns = torch.arange(flat.numel(), device=flat.device) - starts[batch.target_seqs]  # [N] place in its response
    rows = torch.zeros(batch.num_sequences, int(counts.max()), dtype=flat.dtype, device=flat.device)
    mask = torch.zeros(rows.shape, dtype=torch.bool, device=flat.device)
    rows[batch.target_seqs, columns] = flat
    mask[batch.target_seqs, columns] = True
    return rows, mask


class PPOModule(CountsRollouts, DPOLitModule):
    """PPO of a policy against the KL-penalised reward (module docstring).

    Args:
        settings: the `algorithm=ppo` settings (`online.settings.PPOSettings`).
        sampling: how responses are drawn (π itself by default).
        labeller: the sequence reward r(x, y): a `RewardLabeller` of the task's reward (PPO-GT) or a reward model.
        tokenizer: the policy's (pad and EOS ids, decoding).
        collate: the layout of the training forward passes (default: packed).
        **kwargs: DPOLitModule's arguments (model, optimizer, reference, kl_reference); the objective is unused.
    """

    def __init__(
        self,
        *,
        settings: PPOSettings,
        sampling: SamplingSettings,
        labeller: Labeller,
        tokenizer: Any,
        collate: Collate | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("loss", {"_target_": "dpo_lightning.losses.dpo.DPO", "beta": 0.1})  # unused by PPO
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.settings, self.sampling, self.labeller, self.tokenizer = settings, sampling, labeller, tokenizer
        self.collate = collate or collate_function("packed", tokenizer.pad_token_id)
        self.kl_controller = (
            AdaptiveKLController(settings.kl_coef, settings.target_kl, settings.kl_horizon)
            if settings.adaptive_kl
            else FixedKLController(settings.kl_coef)
        )
        self.value_head: torch.nn.Linear | None = None
        self.rollouts_done = 0  # rollouts trained on: the counter the sampling seed and minibatch order follow
        self.rollout_counts: Counter[str] = Counter()  # over the run so far (all steps, this rank)
        self.rollout_reasons: Counter[str] = Counter()

    @property
    def needs_reference(self) -> bool:
        return True  # the KL penalty

    def configure_model(self) -> None:
        super().configure_model()
        if self.value_head is None:
            self.value_head = torch.nn.Linear(self.policy.config.hidden_size, 1, dtype=torch.float32)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

    def configure_optimizers(self) -> dict:
        """The configured optimizer over the policy's trainable parameters and the value head, with warm-up."""
        parameters = [p for p in self.policy.parameters() if p.requires_grad] + list(self.value_head.parameters())
        return optimizer_with_warmup(self.optimizer_config, parameters)

    def outputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[N] fp32 log π of the batch's response tokens, [N] values V_t of the states generating them, and [N]
        token entropies of π there — one decoder forward."""
        batch = batch_for(self.policy, batch)
        hidden = decoder_hidden(self.policy, batch)[batch.target_rows, batch.target_positions]  # [N, H]
        head = self.policy.get_output_embeddings()
        logps = response_logprobs(head, hidden, batch.target_ids)  # [N]
        values = self.value_head(hidden.float()).squeeze(-1)  # [N]
        with torch.no_grad():
            logits = head(hidden).float().log_softmax(-1)  # [N, V]
            entropy = -(logits.exp() * logits).sum(-1)  # [N]
        return logps, values, entropy

    def _rollout(self, prompts: list[list[int]]) -> tuple[list[TokenizedRanking], torch.Tensor, dict[str, float]]:
        """Sample one response per prompt and score it: (the responses as one-response rankings, [B] rewards,
        metrics of the sampling)."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        started = time.perf_counter()
        samples = sample_completions(
            self.policy, prompts, self.tokenizer, self.sampling, self.rollouts_done * world + rank, world > 1
        )
        sampled = time.perf_counter() - started
        texts = [
            completion_text(self.tokenizer, prompt, sample) for prompt, sample in zip(prompts, samples, strict=True)
        ]
        labels = self.labeller.label([p for p, _ in texts], [[c] for _, c in texts])
        scores = [group[0] for group in labels.scores]
        if any(score is None for score in scores):
            failed = next(p for (p, _), score in zip(texts, scores, strict=True) if score is None)
            reason = labels.reasons.most_common(1)[0][0] if labels.reasons else "no score"
            raise RunError(
                f"rollout {self.rollouts_done}: the labeller could not score a sample of {failed!r} ({reason})"
            )
        rewards = torch.tensor(scores, dtype=torch.float32, device=self.device)
        cut = torch.tensor([truncated(s, self.tokenizer.eos_token_id) for s in samples], device=self.device)
        if self.settings.missing_eos_penalty is not None:
            rewards = rewards - self.settings.missing_eos_penalty * cut.float()
        self.rollout_counts.update(prompts=len(prompts), samples=len(samples), truncated_samples=int(cut.sum()))
        tokens = sum(len(s) for s in samples)
        metrics = {"train/rollout/tokens_per_s": tokens / sampled if sampled > 0 else 0.0}
        return [TokenizedRanking(p, [s], [0]) for p, s in zip(prompts, samples, strict=True)], rewards, metrics

    def training_step(self, batch: Prompts, batch_idx: int) -> None:
        optimizer, schedule = self.optimizers(), self.lr_schedulers()
        settings = self.settings
        responses, scores, metrics = self._rollout(batch.ids)
        whole = self.collate(responses).to(self.device)
        with torch.no_grad():
            old_flat, value_flat, _ = self.outputs(whole)
            with self.reference_model() as reference:
                reference_flat = token_logprobs(reference, batch_for(reference, whole))
        old_logps, mask = as_rows(old_flat, whole)  # [S, T]
        reference_logps, _ = as_rows(reference_flat, whole)
        old_values, _ = as_rows(value_flat, whole)
        rewards, kl = kl_penalised_rewards(old_logps, reference_logps, scores, mask, self.kl_controller.value)
        if settings.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, old_values, mask, settings.gamma, settings.lam)
        if settings.whiten_advantages:
            advantages = whiten(advantages, mask)

        world, rank = self.trainer.world_size, self.trainer.global_rank
        order = torch.Generator().manual_seed(self.sampling.seed + self.rollouts_done * world + rank)
        stats: dict[str, list[float]] = {}
        for _ in range(settings.ppo_epochs):
            for chunk in torch.randperm(len(responses), generator=order).split(settings.mini_batch_size):
                part = self.collate([responses[i] for i in chunk.tolist()]).to(self.device)
                logps_flat, values_flat, entropy_flat = self.outputs(part)
                logps, part_mask = as_rows(logps_flat, part)
                values, _ = as_rows(values_flat, part)
                entropy, _ = as_rows(entropy_flat, part)
                width = logps.shape[1]
                index = chunk.to(self.device)
                policy_loss, clip_fraction, approx_kl = ppo_policy_loss(
                    logps, old_logps[index, :width], advantages[index, :width], part_mask, settings.clip_range
                )
                value_loss, value_clip_fraction = ppo_value_loss(
                    values, old_values[index, :width], returns[index, :width], part_mask, settings.clip_range_value
                )
                loss = policy_loss + settings.value_coef * value_loss
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
                schedule.step()
                for name, value in (
                    ("policy_loss", policy_loss), ("value_loss", value_loss), ("clip_fraction", clip_fraction),
                    ("approx_kl", approx_kl), ("value_clip_fraction", value_clip_fraction),
                    ("entropy", masked_mean(entropy, part_mask)),
                ):  # fmt: skip
                    stats.setdefault(name, []).append(float(value.detach()))
        mean_kl = float((kl * mask).sum(-1).mean())  # Σ_t log-ratio per response, mean over responses
        self.kl_controller.update(mean_kl, len(responses) * world)
        self.rollouts_done += 1
        metrics |= {f"train/{name}": sum(values) / len(values) for name, values in stats.items()}
        metrics |= {
            "train/reward": float(scores.mean()),
            "train/kl": mean_kl,
            "train/kl_coef": float(self.kl_controller.value),
            "train/explained_variance": float(explained_variance(old_values, returns, mask)),
            "train/response_tokens": float(mask.sum(-1).float().mean()),
        }
        self.log_dict(metrics, batch_size=len(responses))

    def validation_step(self, batch: Batch | Prompts, batch_idx: int) -> None:
        """PPO's validation is the samples callback's (`val/reward`, `val/kl`); preference batches are not scored."""
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ppo"] = {"rollouts_done": self.rollouts_done, "kl_controller": self.kl_controller.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("ppo", {})
        self.rollouts_done = state.get("rollouts_done", 0)
        if "kl_controller" in state:
            self.kl_controller.load_state_dict(state["kl_controller"])
