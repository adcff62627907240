"""Every hook a plugin can implement.

Each hook is called once, when :func:`ifval.plugins.get_plugin_manager`
builds the registries, and returns the plugin objects of one kind that the
implementing module provides. All results of all implementations are kept;
a name provided twice is an error naming both providers.

Implement a hook in a module of your package with ``@ifval.hookimpl`` and
register the module under the ``ifval`` entry-point group::

    [project.entry-points.ifval]
    my_scorer = "my_package.scorer"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from ifval import NAME

if TYPE_CHECKING:
    from ifval.kinds import Dataset, Estimator, Executor, GroundTruth, Model, Scorer

hookspec = pluggy.HookspecMarker(NAME)


# ----------------------------------------------------------------- data and models


@hookspec
def ifval_datasets() -> list[Dataset]:
    """Return the datasets this plugin provides.

    Called once per plugin manager. Each item is a :class:`ifval.kinds.Dataset`
    instance whose ``load`` returns a standardised training/test split.
    """


@hookspec
def ifval_models() -> list[Model]:
    """Return the model families this plugin provides.

    Called once per plugin manager. Each item is a :class:`ifval.kinds.Model`
    instance that initialises parameters and evaluates stacked models.
    """


# ------------------------------------------------------- estimates and ground truth


@hookspec
def ifval_estimators() -> list[Estimator]:
    """Return the influence estimators this plugin provides.

    Called once per plugin manager. Each item is a :class:`ifval.kinds.Estimator`
    that predicts the change in test loss when a training point is removed.
    """


@hookspec
def ifval_ground_truths() -> list[GroundTruth]:
    """Return the ground truths this plugin provides.

    Called once per plugin manager. Each item is a :class:`ifval.kinds.GroundTruth`
    that measures the change in test loss when a training point is removed.
    """


# ------------------------------------------------------------ scoring and running


@hookspec
def ifval_scorers() -> list[Scorer]:
    """Return the scorers this plugin provides.

    Called once per plugin manager. Each item is a :class:`ifval.kinds.Scorer`
    that turns an (estimate, truth) pair into one number with a direction.
    """


@hookspec
def ifval_executors() -> list[Executor]:
    """Return the executors this plugin provides.

    Called once per plugin manager. Each item is a :class:`ifval.kinds.Executor`
    that runs batches of trials and returns results to the run store's writer.
    """


HOOKS_BY_KIND = {
    "dataset": "ifval_datasets",
    "model": "ifval_models",
    "estimator": "ifval_estimators",
    "ground_truth": "ifval_ground_truths",
    "scorer": "ifval_scorers",
    "executor": "ifval_executors",
}
"""The hook that provides each plugin kind."""
