"""Model ``mlp``: a fully connected classifier evaluated on stacked parameters."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.kinds import Model

if TYPE_CHECKING:
    import torch


class MLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: int = Field(1, ge=0, le=64, strict=True,
                       description="Hidden layers; 0 gives a linear classifier.")
    width: int = Field(8, ge=1, le=65536, strict=True, description="Units per hidden layer.")
    activation: Literal["selu", "tanh", "relu"] = Field("selu", description="Hidden activation.")


def activation_function(name: str):  # type: ignore[no-untyped-def]
    import torch

    return {"selu": torch.selu, "tanh": torch.tanh, "relu": torch.relu}[name]


class MLP(Model):
    """Hidden layers ``layers.{i}`` and an affine output layer ``out``.

    Weights are stored input-major (``x @ W``). Initialisation draws every
    weight and bias from U(−1/√fan_in, 1/√fan_in), the distribution of
    ``torch.nn.Linear``'s default initialisation.
    """

    name = "mlp"
    description = "Fully connected network: depth, width, activation (selu, tanh, relu)."
    Params = MLPParams

    def init(self, params, n_features, n_classes, generator):  # type: ignore[no-untyped-def,override]
        import torch

        sizes = [n_features] + [params.width] * params.depth + [n_classes]
        names = [f"layers.{i}" for i in range(params.depth)] + ["out"]
        weights = {}
        for name, fan_in, fan_out in zip(names, sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            shape_w, shape_b = (fan_in, fan_out), (fan_out,)
            weight = torch.rand(shape_w, generator=generator, dtype=torch.float64)
            bias = torch.rand(shape_b, generator=generator, dtype=torch.float64)
            weights[f"{name}.weight"] = weight * 2 * bound - bound
            weights[f"{name}.bias"] = bias * 2 * bound - bound
        return weights

    def last_layer_names(self, params: BaseModel) -> tuple[str, str]:
        return "out.weight", "out.bias"

    def features(
        self, params: MLPParams, weights: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:  # type: ignore[override]
        act = activation_function(params.activation)
        batch = weights["out.weight"].shape[0]
        hidden = x.expand(batch, *x.shape[-2:]) if x.dim() == 2 else x
        for i in range(params.depth):
            weight, bias = weights[f"layers.{i}.weight"], weights[f"layers.{i}.bias"]
            hidden = act(torch_baddbmm(bias, hidden, weight))
        return hidden


def torch_baddbmm(bias: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``inputs @ weight + bias`` for stacked models: ``(B, n, a) @ (B, a, b) + (B, b)``."""
    import torch

    return torch.baddbmm(bias[:, None, :], inputs, weight)


@ifval.hookimpl
def ifval_models() -> list[Model]:
    return [MLP()]
