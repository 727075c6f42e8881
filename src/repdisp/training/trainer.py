"""``PushAwayTrainer``: a ``transformers.Trainer`` whose loss is CE + λ·L_aux, logged separately.

The batch may carry a ``domain`` tensor (B,) for the cross-domain loss; it is taken out before
the model call. The final-layer states are the last entry of ``output_hidden_states`` (after
the final norm in HF causal LMs). Logged every ``logging_steps``: ``ce``, ``aux`` (= L_aux, the
negative dispersion) and ``dispersion``, averaged over the steps since the last log and over
processes (with ``all_reduce`` on, the processes already agree).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer
from transformers.loss.loss_utils import ForCausalLMLoss

from .loss import PushAwayLoss


class PushAwayTrainer(Trainer):
    """Trainer with the push-away auxiliary loss; ``aux_weight=0`` trains plain CE (still logged)."""

    def __init__(
        self, *args: Any, aux_weight: float = 0.0, push_away: PushAwayLoss | None = None, **kw: Any
    ):
        model = kw.get("model", args[0] if args else None)
        if getattr(model, "loss_type", "") is None and model.loss_function is ForCausalLMLoss:
            # transformers 5.24 detects a shifting causal-LM loss from ``model.loss_type``, which
            # is None for GPT-2; num_items_in_batch then counts T labels per block instead of the
            # T - 1 predicted ones and CE comes out scaled by (T - 1) / T. Name the loss it uses.
            model.loss_type = "ForCausalLM"
        super().__init__(*args, **kw)
        self.aux_weight = float(aux_weight)
        self.push_away = push_away or PushAwayLoss()
        self._sums = torch.zeros(3, dtype=torch.float64)  # ce, aux, dispersion
        self._count = 0

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        domains = inputs.pop("domain", None)
        inputs = {**inputs, "output_hidden_states": True}
        ce, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        aux = self.push_away(outputs.hidden_states[-1], inputs.get("attention_mask"), domains)
        # When CE is normalised over the whole accumulated batch (num_items_in_batch), the
        # Trainer will not divide by the accumulation steps, so the per-micro-batch aux must be.
        ce_scaled_for_ga = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        ga = self.current_gradient_accumulation_steps if ce_scaled_for_ga else 1
        loss = ce + self.aux_weight * aux.loss / ga
        if model.training:
            self._sums += torch.tensor(
                [float(ce.detach()) * ga, float(aux.loss.detach()), float(aux.dispersion)],
                dtype=torch.float64,
            )
            self._count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._count:
            mean = (self._sums / self._count).to(self.args.device)
            mean = self.accelerator.reduce(mean, reduction="mean")
            logs = {**logs, **dict(zip(("ce", "aux", "dispersion"), mean.tolist(), strict=True))}
            self._sums.zero_()
            self._count = 0
        super().log(logs, start_time)
