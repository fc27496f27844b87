"""The default recipe (``recipe: auto``): what embx chooses for the training fields a spec leaves unset, and why.

A spec that names only its data (and a base model) trains with mined hard negatives and the symmetric InfoNCE, up to
:data:`MAX_EPOCHS` epochs at :data:`LEARNING_RATE`, stopping at the first epoch that does not improve the dev main
metric. Each choice rests on a measurement in bench/README.md ("The default recipe against the plain script", "Three
losses over the same negatives"); ``recipe: manual`` keeps the plain sentence-transformers defaults (in-batch negatives,
one epoch at 2e-5) for every unset field. A field the spec sets (itself, through ``extends:`` or ``--set``) is never
changed. The choices depend on the spec only, not on reading the data: the data's size acts through early stopping,
which ends training when more epochs stop paying on dev.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.spec.data import NegativesSpec
    from runner.spec.train import TrainSpec

MAX_EPOCHS = 3
"""Epochs the auto recipe allows; early stopping on dev ends it sooner."""
LEARNING_RATE = 5e-5
"""Peak learning rate of the auto recipe."""
PATIENCE = 1
"""Early-stopping patience of the auto recipe: stop at the first epoch that does not improve the main metric."""
DIRECTIONS = ["query_to_doc", "doc_to_query"]
"""MNRL's terms in the auto recipe: the symmetric InfoNCE (each passage must also find its query)."""

BENCH = "bench/README.md, 'The default recipe against the plain script'"


@dataclass(frozen=True)
class RecipeChoice:
    """One field the auto recipe filled.

    Attributes:
        field: Dotted path of the field (``negatives.mode``).
        value: The value chosen.
        reason: Why, in one sentence, with the measurement it rests on.

    """

    field: str
    value: Any
    reason: str

    def line(self) -> str:
        """``recipe auto: field = value: reason``, as `embx validate` prints and `embx run` logs it."""
        return f"recipe auto: {self.field} = {self.value}: {self.reason}"


def apply_auto_recipe(*, negatives: NegativesSpec, train: TrainSpec, has_dev: bool, main: str) -> list[RecipeChoice]:
    """Fill the recipe fields a spec leaves unset, in place, and say what was chosen.

    Args:
        negatives: The spec's `negatives:` section, just validated (its ``model_fields_set`` tells what the YAML,
            its ``extends:`` and ``--set`` wrote).
        train: The spec's `train:` section, likewise.
        has_dev: Whether the spec has a dev split (``data.splits.dev``).
        main: The spec's main metric (``eval.main``).

    Returns:
        The choices made, in the order they were made (empty when the spec sets every recipe field).

    """
    choices: list[RecipeChoice] = []
    if "mode" not in negatives.model_fields_set and train.loss != "gist":  # gist takes one explicit negative
        negatives.mode = "hard"
        choices.append(
            RecipeChoice(
                "negatives.mode",
                "hard",
                f"{negatives.per_query} negatives per pair mined by the base model from ranks "
                f"{negatives.mine_range[0]}-{negatives.mine_range[1]}, candidates within "
                f"{negatives.relative_margin:.0%} of the positive's score dropped as likely unlabelled positives; "
                "beside the in-batch ones, they show the model the near misses in-batch negatives rarely do "
                f"(against the plain script's in-batch negatives: {BENCH})",
            )
        )
    if "directions" not in train.model_fields_set and _takes_directions(train):
        train.directions = list(DIRECTIONS)
        choices.append(
            RecipeChoice(
                "train.directions",
                list(DIRECTIONS),
                "MNRL's symmetric InfoNCE: each passage must also find its query among the batch's queries; "
                "+0.0072 over the recipe without it on financial_qa_10k over three seeds (p 0.0096), no different on "
                "the demo (+0.002, p 0.8342) and steadier across seeds (bench/README.md, 'Three losses over the same "
                "negatives'); GTE's four terms gained nothing significant",
            )
        )
        if "partition_mode" not in train.model_fields_set:
            train.partition_mode = "per_direction"
            choices.append(
                RecipeChoice(
                    "train.partition_mode",
                    "per_direction",
                    "one softmax per direction, averaged, as measured: each term's pool holds its positive",
                )
            )
    if "early_stopping" not in train.model_fields_set:
        if has_dev:
            train.early_stopping.patience = PATIENCE
            train.early_stopping.keep_base = True
            choices.append(
                RecipeChoice(
                    "train.early_stopping",
                    f"patience {PATIENCE} on dev {main}, keep_base",
                    "stops at the first epoch that does not improve the main metric and keeps the best epoch's "
                    "weights, so no epoch is trained only to be thrown away; the base model counts as epoch 0, so "
                    "a run that no epoch improved on dev hands on the base model, never a worse one",
                )
            )
        else:
            train.early_stopping = None
            choices.append(
                RecipeChoice("train.early_stopping", None, "no dev split (data.splits.dev: null) to stop on")
            )
    if "epochs" not in train.model_fields_set and has_dev:
        train.epochs = MAX_EPOCHS
        choices.append(
            RecipeChoice(
                "train.epochs",
                MAX_EPOCHS,
                "at most; early stopping on dev ends training sooner when an epoch stops paying, so small sets get "
                "the epochs they need and large ones stop early (allowed 10 on 100 and 500 pairs of financial_qa_10k, "
                f"both stopped after 4 and scored no higher: {BENCH})",
            )
        )
    if "learning_rate" not in train.model_fields_set:
        train.learning_rate = LEARNING_RATE
        choices.append(
            RecipeChoice(
                "train.learning_rate",
                LEARNING_RATE,
                "the demo's rate: twice it helped in fp32 and hurt in bf16 (bench/README.md, 'The demo sized to its "
                "promise'); a probe on dev (train.lr_probe) chose 1e-4 on the demo and on financial_qa_10k and gained "
                f"nothing significant over it ({BENCH})",
            )
        )
    return choices


def _takes_directions(train: TrainSpec) -> bool:
    """Whether the spec trains one of sentence-transformers' MNRL losses, the ones with directions."""
    mnrl = train.loss in ("mnrl", "cached-mnrl")
    return train.backend == "sentence-transformers" and mnrl and train.query_adapter is None
