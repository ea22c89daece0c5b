"""KD divergences and the other losses the methods share (each written once)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from .acceleration import log_count
from .errors import InputError


def kl_div(p_logits_or_probs: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0,
           p_is_probs: bool = False, reduction: str = "batchmean") -> torch.Tensor:
    """KL(p || q) with p the target (teacher) and q the model being trained, at a temperature.

    Scaled by T^2 (Hinton et al.) so gradients keep their size across temperatures.
    reduction: 'batchmean' (scalar) or 'none' (per sample).
    """
    t = float(temperature)
    p = p_logits_or_probs if p_is_probs else F.softmax(p_logits_or_probs / t, 1)
    log_q = F.log_softmax(q_logits / t, 1)
    per_sample = (p * (p.clamp_min(1e-12).log() - log_q)).sum(1) * (t * t)
    return per_sample.mean() if reduction == "batchmean" else per_sample


def soft_cross_entropy(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """H(p, q) = -sum p log q, batch mean, p = softmax(p_logits) treated as a constant target.
    Equals KL(p || q) + H(p): the same gradient for q, but not for whatever produced p."""
    p = F.softmax(p_logits, 1).detach()
    return -(p * F.log_softmax(q_logits, 1)).sum(1).mean()


def kl_uniform(logits: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(U || softmax(logits)): zero when the prediction is uniform over the classes."""
    c = logits.shape[1]
    per_sample = -F.log_softmax(logits, 1).mean(1) - log_count(c)  # no tensor made on the device (a host sync)
    return per_sample.mean() if reduction == "batchmean" else per_sample


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy (nats) of softmax(logits)."""
    log_p = F.log_softmax(logits, 1)
    return -(log_p.exp() * log_p).sum(1)


def rslad_student_loss(teacher_clean_logits: torch.Tensor, student_clean_logits: torch.Tensor,
                       student_adv_logits: torch.Tensor, w_clean: float = 1 / 6, w_adv: float = 5 / 6) -> torch.Tensor:
    """RSLAD (Zi et al. 2021): w_adv KL(T(x) || S(x_adv)) + w_clean KL(T(x) || S(x))."""
    return w_adv * kl_div(teacher_clean_logits, student_adv_logits) + w_clean * kl_div(teacher_clean_logits, student_clean_logits)


def attention_map(activation: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis attention: the channel-mean of squared activations, flattened, L2-normalised."""
    return F.normalize(activation.pow(2).mean(1).flatten(1), dim=1)


def attention_transfer(student_acts, teacher_acts) -> torch.Tensor:
    """Sum over matched stages of the mean squared distance between attention maps.

    Stages are paired by spatial size (the last stage of each resolution on both sides), so
    students and teachers of different depths (ResNet-18 vs WRN) pair the way ZSKT pairs blocks.
    """
    def last_per_size(acts):
        out = {}
        for a in acts:
            if a.dim() == 4:
                out[tuple(a.shape[-2:])] = a
        return out

    s_by, t_by = last_per_size(student_acts), last_per_size(teacher_acts)
    shared = [k for k in s_by if k in t_by]
    if not shared:
        raise InputError("no student and teacher stages share a spatial size: attention transfer cannot pair them")
    return sum((attention_map(s_by[k]) - attention_map(t_by[k])).pow(2).mean() for k in shared)


def decision_adversarial_loss(t_logits: torch.Tensor, s_logits: torch.Tensor) -> tuple:
    """-mean_i m_i KL(T_i || S_i), m_i = 1 where teacher and student predict the same class.

    CMI's and Fast's adversarial term (the authors' code): the generator seeks samples on which the
    student still agrees with the teacher but diverges from its distribution. The mean is over the
    whole batch (masked samples count as zero). Returns (loss, mask).
    """
    mask = (s_logits.argmax(1) == t_logits.argmax(1)).to(t_logits.dtype)
    return -(kl_div(t_logits, s_logits, reduction="none") * mask).mean(), mask
