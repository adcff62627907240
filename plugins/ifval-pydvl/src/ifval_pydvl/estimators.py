"""Estimators ``pydvl_direct``, ``pydvl_cg``, ``pydvl_arnoldi`` and ``pydvl_ekfac``.

Each wraps one of pyDVL 0.10's torch influence models (``DirectInfluence``,
``CgInfluence``, ``ArnoldiInfluence``, ``EkfacInfluence``) and converts its
values to ifval's: the predicted change in test loss when training point i is
removed, ℓ(z_test, θ̂₋ᵢ) − ℓ(z_test, θ̂).

What pyDVL 0.10 computes. In mode ``InfluenceMode.Up`` the influence of
training point z_i on test point z is

    I(z, z_i) = ∇ℓ(z)ᵀ (H_D + r I)⁻¹ ∇ℓ(z_i),

with no minus sign and no 1/n (``InfluenceFunctionModel.influences`` and
``influences_from_factors`` in ``pydvl/influence/base_influence_function_model.py``,
``OperatorBilinearForm.inner_prod`` in ``pydvl/influence/torch/base.py``,
which applies the inverse to one side and takes the plain inner product).
H_D is the Hessian of the loss given to pyDVL, averaged over the fitting data.
``pydvl.influence.torch.functional.hessian`` weights each data-loader batch's
Hessian by its size and divides by the number of samples. With a
mean-reduced loss, H_D is therefore the Hessian of (1/n) Σ_j ℓ_j. The regularisation r
enters as r·I: ``DirectSolveOperator`` adds it to the diagonal, ``CgOperator``
adds r·x to every Hessian-vector product, ``LowRankOperator`` adds it to the
eigenvalues, and ``EkfacInfluence`` adds its ``hessian_regularization`` to the
EK-FAC eigenvalues (all in ``pydvl/influence/torch/operator.py`` and
``influence_function_model.py``). ``influence_factors`` returns
(H_D + r I)⁻¹ ∇ℓ(z) itself.

The conversion. ifval's H is the Hessian of (1/n) Σ ℓ_j + (w/2)‖θ‖², that is
H_D + w I, and pyDVL's loss has no weight-decay term, so the estimators pass
r = w + λ, with λ the estimator's ``damping``. Then H_D + r I = H + λI, and
with s = (H + λI)⁻¹ g_test, the mean of pyDVL's influence factors over the
test points (g_test is the gradient of their mean loss):

    original_n:  Δ̂_i = I(z_test, z_i) / n = sᵀ g_i / n
    remaining:   Δ̂_i = (sᵀ g_i + w sᵀ θ̂) / (n − 1)

For a group U of m points removed at once (``estimate_groups``) the
first-order estimate sums the members' terms, as ifval's ``exact`` does:
Σ_{i∈U} sᵀ g_i / n, or (Σ_{i∈U} sᵀ g_i + m w sᵀ θ̂) / (n − m).

pyDVL's value needs no change of sign. Koh & Liang's influence of
up-weighting z_i on the test loss is I_up,loss = −g_testᵀ H⁻¹ g_i, and
removing z_i is up-weighting it by ε = −1/n, so the change in test loss is
ε·I_up,loss = +(1/n) g_testᵀ H⁻¹ g_i = +I(z_test, z_i)/n. The tests compare
every estimator with ``exact`` on the same trained models.

A model with a penalty (``Model.penalty``) is rejected, because pyDVL's
Hessian has no place for that term's curvature.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import ifval
from ifval.errors import IfvalError, NumericalError
from ifval.estimators.scope import SCOPE_DESCRIPTION, Scope
from ifval.kinds import EstimateResult, Estimator, Normalisation, TrainedBatch

if TYPE_CHECKING:
    import torch

    from ifval_pydvl.modules import PydvlProblem

logger = logging.getLogger(__name__)

DAMPING_DESCRIPTION = (
    "Tikhonov damping λ added to the Hessian. pyDVL receives `regularization` = weight decay "
    "+ λ, because its loss has no weight-decay term."
)
BATCH_SIZE_DESCRIPTION = (
    "Training points per batch of pyDVL's data loader; null passes all of them at once. "
    "pyDVL averages batch Hessians weighted by batch size, so this changes only memory use "
    "and rounding."
)


class PydvlParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope = Field("last_layer", description=SCOPE_DESCRIPTION)
    damping: float = Field(0.0, ge=0, description=DAMPING_DESCRIPTION)
    batch_size: int | None = Field(None, ge=1, strict=True, description=BATCH_SIZE_DESCRIPTION)


class DirectParams(PydvlParams):
    rtol: float = Field(
        1e-10, gt=0, lt=1,
        description="H + λI counts as not positive definite when its smallest eigenvalue is "
        "at most `rtol` times its largest, as for the estimator 'exact'.",
    )


class CgParams(PydvlParams):
    rtol: float = Field(
        1e-4, gt=0,
        description="pyDVL's `rtol`. pyDVL 0.10 stops conjugate gradient once the residual norm "
        "is below max(rtol² × |b₁|, atol²), where b₁ is the first entry of the right-hand "
        "side g_test, so both settings act squared.",
    )
    atol: float = Field(1e-6, gt=0, description="pyDVL's `atol`, used as `rtol` describes.")
    maxiter: int | None = Field(
        None, ge=1, strict=True,
        description="Maximum conjugate-gradient iterations; null uses pyDVL's default of 10 "
        "times the number of parameters.",
    )


class ArnoldiParams(PydvlParams):
    rank: int = Field(
        10, ge=1, strict=True,
        description="Eigenpairs of largest magnitude kept in the low-rank Hessian. pyDVL 0.10 "
        "computes at most p − 1 of the p parameters' eigenpairs (ARPACK's limit), so a larger "
        "rank uses p − 1.",
    )
    krylov_dimension: int | None = Field(
        None, ge=2, strict=True,
        description="Lanczos vectors ARPACK keeps; null uses pyDVL's default "
        "min(p, max(2 × rank + 1, 20)).",
    )
    tol: float = Field(1e-6, ge=0, description="ARPACK's relative tolerance on the eigenvalues.")
    max_iter: int | None = Field(
        None, ge=1, strict=True,
        description="Maximum ARPACK iterations; null uses 10 times the number of parameters.",
    )
    use_woodbury: bool = Field(
        False,
        description="Invert the low-rank Hessian plus (w + λ)I exactly with the Woodbury "
        "formula, which gives the directions outside the top eigenvectors the weight "
        "1/(w + λ). False drops them. True needs w + λ > 0.",
    )


class EkfacParams(PydvlParams):
    update_diagonal: bool = Field(
        True,
        description="Refit the eigenvalues in the Kronecker eigenbasis from the training data "
        "(the eigenvalue correction of EK-FAC); false keeps the K-FAC eigenvalues.",
    )


class PydvlEstimator(Estimator):
    """Common steps: build the module, fit pyDVL's model, convert its values."""

    Params = PydvlParams

    supports_groups = True

    def estimate(self, params: PydvlParams, batch: TrainedBatch, points: np.ndarray,  # type: ignore[override]
                 normalisation: Normalisation) -> EstimateResult:
        return self.estimate_groups(params, batch, points[..., None], normalisation)

    def estimate_groups(self, params: PydvlParams, batch: TrainedBatch,  # type: ignore[override]
                        groups: np.ndarray, normalisation: Normalisation) -> EstimateResult:
        """First-order estimate for removing each group ``groups[b, j]`` of m rows at once."""
        values = np.empty(groups.shape[:2], dtype=np.float64)
        info = []
        for index in range(batch.size):
            row, details = self._estimate_one(params, batch, index, groups[index], normalisation)
            values[index] = row
            info.append(details)
            batch.report(f"{self.name} models", index + 1, batch.size)
        return EstimateResult(values, info)

    def _estimate_one(self, params: PydvlParams, batch: TrainedBatch, index: int,
                      groups: np.ndarray, normalisation: Normalisation) -> tuple[np.ndarray, dict]:
        problem = self._problem(params, batch, index)
        decay = float(batch.weight_decay[index])
        regularization = decay + params.damping
        context = f"estimator {self.name!r} (scope {params.scope}, seed {batch.seeds[index]})"
        theta = problem.flat_parameters()
        details: dict[str, Any] = {"parameters": int(theta.numel()), "scope": params.scope,
                                   "damping": params.damping, "regularization": regularization}

        count, members = groups.shape
        test_factor, products = self._influences(params, batch, problem, groups.reshape(-1),
                                                 regularization, details, context)
        summed = products.reshape(count, members).sum(dim=1)
        n = batch.n_train
        if normalisation == "original_n":
            values = summed / n
        else:
            values = (summed + members * decay * (test_factor @ theta)) / (n - members)

        values = values.detach().numpy()
        if not np.isfinite(values).all():
            msg = (f"{context}: pyDVL returned {int((~np.isfinite(values)).sum())} values that "
                   f"are not finite (regularization w + λ = {regularization:g}); raise the "
                   "estimator's `damping`")
            raise NumericalError(msg)
        return values, details

    def _influences(self, params: PydvlParams, batch: TrainedBatch, problem: PydvlProblem,
                    rows: np.ndarray, regularization: float, details: dict[str, Any],
                    context: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit pyDVL's model and return s = (H + λI)⁻¹ g_test and sᵀ g_i for each of ``rows``."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        influence_mode = _import_pydvl().InfluenceMode
        data = TensorDataset(problem.inputs_train, batch.y_train)
        loader = DataLoader(data, batch_size=params.batch_size or batch.n_train)
        influence = self._influence_model(params, problem, regularization, context)
        chosen = torch.as_tensor(rows, dtype=torch.long)

        with warnings.catch_warnings(record=True) as caught, float64_default():
            warnings.simplefilter("always")
            # EK-FAC's backward hook on the first layer, whose input needs no gradient,
            # makes torch warn on every pass. The hook still receives the right gradients.
            warnings.filterwarnings("ignore", message="Full backward hook is firing",
                                    category=UserWarning)
            try:
                influence.fit(loader)
                self._check_fit(params, influence, details, context)
                # One test point per call: pyDVL 0.10's CgOperator pairs each right-hand side
                # with the tolerance of one parameter coordinate, so with more right-hand
                # sides than parameters the extra ones would be left at zero.
                factors = torch.cat([
                    influence.influence_factors(problem.inputs_test[row : row + 1],
                                                batch.y_test[row : row + 1])
                    for row in range(len(batch.y_test))
                ])
                test_factor = factors.mean(dim=0)
                products = influence.influences_from_factors(
                    test_factor[None], problem.inputs_train[chosen], batch.y_train[chosen],
                    mode=influence_mode.Up)[0]
            except torch.linalg.LinAlgError as exc:
                msg = (f"{context}: pyDVL's linear algebra failed ({exc}) with regularization "
                       f"w + λ = {regularization:g}; raise the estimator's `damping`")
                raise NumericalError(msg) from exc
        self._report_warnings(caught, details, context)
        return test_factor, products

    # Hooks of each estimator ----------------------------------------------------------

    def _problem(self, params: PydvlParams, batch: TrainedBatch, index: int) -> PydvlProblem:
        from ifval_pydvl.modules import scoped_problem

        return scoped_problem(batch, index, params.scope, self.name)

    def _influence_model(self, params: PydvlParams, problem: PydvlProblem,
                         regularization: float, context: str) -> Any:
        raise NotImplementedError

    def _check_fit(self, params: PydvlParams, influence: Any, details: dict[str, Any],
                   context: str) -> None:
        """Check the fitted model and add its diagnostics to ``details`` (by default, none)."""

    def _report_warnings(self, caught: list[warnings.WarningMessage], details: dict[str, Any],
                         context: str) -> None:
        """Log pyDVL's warnings, which in 0.10 are how its solvers report non-convergence."""
        messages = [str(warning.message) for warning in caught
                    if not issubclass(warning.category, DeprecationWarning | FutureWarning)]
        details["solver_warnings"] = len(messages)
        for message in messages:
            logger.warning("%s: pyDVL warned: %s", context, message.replace("\n", " "))


class PydvlDirect(PydvlEstimator):
    """Δ̂_i from pyDVL's ``DirectInfluence``: an explicit Hessian solved with ``torch.linalg.solve``.

    Before solving, the eigenvalues of pyDVL's H + λI are checked as the
    estimator ``exact`` checks its own, so a singular or indefinite system
    raises :class:`NumericalError` instead of returning noise.
    """

    name = "pydvl_direct"
    description = "pyDVL 0.10 DirectInfluence: explicit Hessian of the loss, solved directly."
    Params = DirectParams

    def _influence_model(self, params: DirectParams, problem: PydvlProblem,  # type: ignore[override]
                         regularization: float, context: str) -> Any:
        return _import_pydvl().DirectInfluence(problem.module, problem.loss,
                                               regularization=regularization)

    def _check_fit(self, params: DirectParams, influence: Any, details: dict[str, Any],  # type: ignore[override]
                   context: str) -> None:
        import torch

        # NOTE: reads pyDVL 0.10's internals (the block mapper's DirectSolveOperator, whose
        # `matrix` already holds H_D + r·I); another pyDVL version may store it elsewhere.
        blocks = influence.block_mapper.composable_block_dict
        eigenvalues = torch.cat([torch.linalg.eigvalsh(block.op.matrix)
                                 for block in blocks.values()])
        smallest, largest = float(eigenvalues.min()), float(eigenvalues.max())
        details["min_eigenvalue"], details["max_eigenvalue"] = smallest, largest
        if smallest <= params.rtol * abs(largest):
            suggestion = (params.damping + max(-smallest, 0.0)
                          + 1e-3 * max(abs(largest), 1e-12))
            msg = (f"{context}: H + λI is not positive definite; its smallest eigenvalue is "
                   f"{smallest:.3e} (largest {largest:.3e}, regularization w + λ = "
                   f"{details['regularization']:g}); set the estimator's `damping` to at least "
                   f"{suggestion:.3g}")
            raise NumericalError(msg)


class PydvlCg(PydvlEstimator):
    """Δ̂_i from pyDVL's ``CgInfluence``: conjugate gradient on Hessian-vector products.

    CG converges only when H + λI is positive definite. When it stops at
    ``maxiter`` without meeting its tolerance, pyDVL warns, and the estimator
    logs the warning and counts it in ``solver_warnings`` of the estimate's info.
    """

    name = "pydvl_cg"
    description = "pyDVL 0.10 CgInfluence: conjugate gradient on Hessian-vector products."
    Params = CgParams

    def _influence_model(self, params: CgParams, problem: PydvlProblem,  # type: ignore[override]
                         regularization: float, context: str) -> Any:
        return _import_pydvl().CgInfluence(
            problem.module, problem.loss, regularization=regularization, rtol=params.rtol,
            atol=params.atol, maxiter=params.maxiter, warn_on_max_iteration=True)


class PydvlArnoldi(PydvlEstimator):
    """Δ̂_i from pyDVL's ``ArnoldiInfluence``: the loss Hessian's top eigenpairs from ARPACK.

    ARPACK finds the k = ``rank`` eigenpairs of H_D of largest magnitude, and
    w + λ is added to each eigenvalue. With k < p the directions outside the
    top k eigenvectors are dropped (or, with ``use_woodbury``, weighted
    1/(w + λ)), so the estimate is a low-rank approximation by design.
    """

    name = "pydvl_arnoldi"
    description = "pyDVL 0.10 ArnoldiInfluence: low-rank Hessian from its top eigenpairs."
    Params = ArnoldiParams

    def _influence_model(self, params: ArnoldiParams, problem: PydvlProblem,  # type: ignore[override]
                         regularization: float, context: str) -> Any:
        if params.use_woodbury and regularization <= 0:
            msg = (f"{context}: use_woodbury needs weight decay + damping > 0, got "
                   f"{regularization:g}; set `damping` above 0 or `use_woodbury` to false")
            raise IfvalError(msg)
        parameters = int(problem.flat_parameters().numel())
        rank = min(params.rank, parameters - 1)
        if params.krylov_dimension is not None and not (
                rank < params.krylov_dimension <= parameters):
            msg = (f"{context}: krylov_dimension {params.krylov_dimension} is invalid for rank "
                   f"{rank} and {parameters} parameters; ARPACK needs rank < krylov_dimension "
                   f"<= parameters, so set it between {rank + 1} and {parameters}, or to null")
            raise IfvalError(msg)
        return _import_pydvl().ArnoldiInfluence(
            problem.module, problem.loss, regularization=regularization, rank=params.rank,
            krylov_dimension=params.krylov_dimension, tol=params.tol, max_iter=params.max_iter,
            use_woodbury=params.use_woodbury)

    def _check_fit(self, params: ArnoldiParams, influence: Any, details: dict[str, Any],  # type: ignore[override]
                   context: str) -> None:
        details["rank"] = min(params.rank, details["parameters"] - 1)


class PydvlEkfac(PydvlEstimator):
    """Δ̂_i from pyDVL's ``EkfacInfluence``: a Kronecker-factored curvature per linear layer.

    pyDVL's EK-FAC approximates the curvature of the cross-entropy from the
    model's own predictive distribution, layer by layer, so it is an
    approximation of ``exact`` even at full rank. It applies only to models
    built from ``nn.Linear`` layers (see
    :func:`ifval_pydvl.modules.linear_problem`), and raises
    :class:`IfvalError` for others.
    """

    name = "pydvl_ekfac"
    description = "pyDVL 0.10 EkfacInfluence: Kronecker-factored curvature of linear layers."
    Params = EkfacParams

    def _problem(self, params: PydvlParams, batch: TrainedBatch, index: int) -> PydvlProblem:
        from ifval_pydvl.modules import linear_problem

        return linear_problem(batch, index, params.scope, self.name)

    def _influence_model(self, params: EkfacParams, problem: PydvlProblem,  # type: ignore[override]
                         regularization: float, context: str) -> Any:
        return _import_pydvl().EkfacInfluence(problem.module,
                                              update_diagonal=params.update_diagonal,
                                              hessian_regularization=regularization)


@contextmanager
def float64_default() -> Iterator[None]:
    """Make float64 torch's default dtype for the duration, then restore the previous one.

    pyDVL 0.10's EK-FAC allocates its Kronecker factors with ``torch.zeros``
    and no dtype, and float32 factors fail against a float64 model. Every
    pyDVL call of the estimators runs inside this context.
    """
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _import_pydvl() -> SimpleNamespace:
    """Import the pyDVL 0.10 classes the estimators use.

    Importing ``pydvl.influence`` makes its dependency pyDeprecate raise
    FutureWarnings about pyDVL's own code, which no ifval user can act on,
    so they are muted for the import.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from pydvl.influence import InfluenceMode
        from pydvl.influence.torch import (
            ArnoldiInfluence,
            CgInfluence,
            DirectInfluence,
            EkfacInfluence,
        )

    return SimpleNamespace(InfluenceMode=InfluenceMode, DirectInfluence=DirectInfluence,
                           CgInfluence=CgInfluence, ArnoldiInfluence=ArnoldiInfluence,
                           EkfacInfluence=EkfacInfluence)


@ifval.hookimpl
def ifval_estimators() -> list[Estimator]:
    return [PydvlDirect(), PydvlCg(), PydvlArnoldi(), PydvlEkfac()]
