"""The training loss at labelled positions only: what our trainer scores on the CPU, and what ``make gpu-check`` runs
without TRL; and TRL's fused LM head made to do the same on the CPU (GRPO's and DPO's log-probabilities)."""

import contextlib

import torch.nn.functional as F

from .collator import IGNORE_INDEX


def labelled_positions_loss(model, inputs: dict, num_items_in_batch=None):
    """Next-token cross-entropy with the LM head applied only where some row of the batch has a label.

    The positions go to the model's forward as ``logits_to_keep``, so the call stays one forward of the (possibly
    DDP-wrapped) model. Returns the loss (summed over labelled tokens, divided by ``num_items_in_batch`` when given,
    else by their count) and the fp32 logits and targets of the labelled tokens, for metrics."""
    targets = inputs["labels"][:, 1:]  # the label of position p is the token at p + 1
    positions = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**model_inputs, logits_to_keep=positions, use_cache=False).logits.float()
    targets = targets[:, positions]
    mask = targets != IGNORE_INDEX
    logits, targets = logits[mask], targets[mask]
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return F.cross_entropy(logits, targets, reduction="sum") / denominator, logits.detach(), targets


@contextlib.contextmanager
def fused_head_at_labelled_positions():
    """TRL's fused LM head (``add_fused_lm_head``: GRPO's and DPO's log-probabilities) projecting only the labelled
    positions on every device. TRL 1.16 does so on Triton devices; elsewhere it projects every position of the batch
    (fixed shapes, for compilers such as Neuron's), which on the eager CPU is most of a step: docvqa_grpo's smoke run
    took 67 s so and 24 s with this. The log-probabilities are the same (``tests/test_grpo.py``); the flag it reads
    chooses only the positions, the kernels ask again whether Triton serves."""
    from trl.trainer import utils

    original = utils._use_triton
    utils._use_triton = lambda device: True
    try:
        yield
    finally:
        utils._use_triton = original
