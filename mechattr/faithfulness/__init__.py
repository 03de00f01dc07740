"""Faithfulness of attributions: comprehensiveness, sufficiency, log-odds, curves, sanity checks.

See :mod:`~mechattr.faithfulness.metrics` (DeYoung et al. 2020; Shrikumar et al. 2017),
:mod:`~mechattr.faithfulness.curves` (deletion/insertion), :mod:`~mechattr.faithfulness.sanity`
(Adebayo et al. 2018 cascading randomization, cross-method agreement, completeness) and
:mod:`~mechattr.faithfulness.removal` (removal operators).
"""

from mechattr.faithfulness.curves import CurveResult, auc, deletion_insertion
from mechattr.faithfulness.metrics import (
    FaithfulnessResult,
    comprehensiveness,
    faithfulness,
    label_target,
    log_odds,
    sufficiency,
    top_mask,
)
from mechattr.faithfulness.removal import Removal, parse_removal, perturbed_values, removable_mask
from mechattr.faithfulness.sanity import (
    SanityResult,
    agreement,
    cascading_randomization,
    completeness,
    rowwise_spearman,
    spearman,
    stage_names,
)

__all__ = [
    "CurveResult", "auc", "deletion_insertion", "FaithfulnessResult", "comprehensiveness",
    "faithfulness", "label_target", "log_odds", "sufficiency", "top_mask", "Removal",
    "parse_removal", "perturbed_values", "removable_mask", "SanityResult", "agreement",
    "cascading_randomization", "completeness", "rowwise_spearman", "spearman", "stage_names",
]
