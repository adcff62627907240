"""Setting types shared by the protocol schema and plugins' ``Params`` (no torch here)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError


def _reject_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a valid number")
    return value


Real = Annotated[float, BeforeValidator(_reject_bool)]
"""A float setting that rejects ``true`` and ``false``.

Strings are still converted, because PyYAML reads ``1e-3`` (no dot) as a string.
"""


class Plateau(BaseModel):
    """ReduceLROnPlateau on the full-batch loss, with torch's semantics (mode min, no cooldown)."""

    model_config = ConfigDict(extra="forbid")

    factor: Real = Field(0.1, gt=0, lt=1, description="Multiplier applied to the learning rate.")
    patience: int = Field(
        100, ge=0, strict=True, description="Epochs without improvement before a cut."
    )
    threshold: Real = Field(
        1e-4, ge=0, description="Relative improvement that counts as better (mode 'rel')."
    )
    min_lr: Real = Field(0.0, ge=0, description="Lower bound on the learning rate.")


class SWA(BaseModel):
    """Stochastic weight averaging (Izmailov et al. 2018) over the last part of training.

    From epoch ``start · epochs`` on, the learning rate of each model anneals
    from its current value to ``lr`` over ``anneal_epochs`` epochs, as
    ``torch.optim.swa_utils.SWALR`` does, and the parameters after every
    ``frequency``-th step are averaged. The average is θ̂.
    """

    model_config = ConfigDict(extra="forbid")

    start: Real = Field(
        0.75, gt=0, lt=1, description="Fraction of the epochs after which averaging starts."
    )
    lr: Real = Field(5e-4, gt=0, description="SWA learning rate reached after the annealing.")
    anneal_epochs: int = Field(
        10, ge=0, strict=True, description="Epochs of annealing from the current rate to `lr`."
    )
    anneal_strategy: Literal["cos", "linear"] = Field(
        "cos", description="Shape of the annealing, as in SWALR."
    )
    frequency: int = Field(
        1, ge=1, strict=True, description="Average the parameters after every this many steps."
    )
