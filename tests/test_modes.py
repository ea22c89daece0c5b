"""The model-mode contract (dfrd_bench.modes): what is switched, and that all of it comes back."""
import pytest
import torch

from dfrd_bench.modes import frozen, in_eval_mode, model_mode


def _net() -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).train()
    net[2].bias.requires_grad_(False)  # one parameter frozen on purpose: its own flag must come back
    return net


def test_frozen_switches_mode_and_flags_and_restores_each_flag():
    net = _net()
    with frozen(net) as inner:
        assert inner is net and not net.training and not any(p.requires_grad for p in net.parameters())
        x = torch.rand(3, 4, requires_grad=True)
        net(x).sum().backward()  # the input gradient still flows
        assert x.grad is not None and all(p.grad is None for p in net.parameters())
    assert net.training and [p.requires_grad for p in net.parameters()] == [True, True, True, True, True, False]


def test_frozen_without_eval_mode_keeps_the_mode_and_restores_after_an_error():
    net = _net()
    net[1].eval()  # a submodule in eval mode under a training parent stays so (the mode is not re-applied)
    with pytest.raises(RuntimeError):
        with frozen(net, eval_mode=False):
            assert net.training and not net[0].weight.requires_grad
            raise RuntimeError("boom")
    assert net.training and not net[1].training and net[0].weight.requires_grad and not net[2].bias.requires_grad


def test_in_eval_mode_leaves_parameters_alone_and_model_mode_can_train():
    net = _net().eval()
    with in_eval_mode(net):
        assert not net.training and net[0].weight.requires_grad
    with model_mode(net, train=True):
        assert net.training
    assert not net.training
