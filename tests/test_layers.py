"""Standard torch.nn layers found in a model, and the arguments that build them again."""

from __future__ import annotations

import torch

from analysis.layers import standard_layers


class MyLinear(torch.nn.Linear):
    """A library's own subclass: its forward may differ, so it is no standard layer."""


def test_layers_are_rebuilt_with_only_the_arguments_that_differ_from_defaults() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8, bias=False),
        torch.nn.Conv2d(3, 6, 3, stride=2, padding=1),
        torch.nn.LayerNorm(8, eps=1e-6),
        torch.nn.Linear(8, 8, dtype=torch.bfloat16),
    )
    found = standard_layers(model)
    assert found["0"].args == (4, 8) and found["0"].kwargs == (("bias", False),)
    assert found["1"].args == (3, 6, (3, 3)) and dict(found["1"].kwargs) == {
        "stride": (2, 2),
        "padding": (1, 1),
    }
    assert dict(found["3"].kwargs) == {"dtype": torch.bfloat16}
    for path, layer in found.items():
        rebuilt = layer.cls(*layer.args, **dict(layer.kwargs))
        assert rebuilt.extra_repr() == model.get_submodule(path).extra_repr()


def test_subclasses_and_unwritable_arguments_are_not_standard_layers() -> None:
    model = torch.nn.Sequential(
        MyLinear(4, 4),
        torch.nn.Embedding(10, 4, max_norm=float("inf")),  # `inf` has no literal to write
        torch.nn.Sequential(torch.nn.ReLU()),
    )
    assert set(standard_layers(model)) == {"2.0"}
