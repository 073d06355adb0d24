"""The API of vlm-trainer-operator: group ``vlmtrain.dev``, version ``v1alpha1``.

Three kinds, as pydantic models that are the single source of truth for the CRDs
(``python -m vlm_operator.crdgen``): TrainingShape (cluster-scoped), TrainerJob and Checkpoint.
Read an object from the API with ``TrainerJob.model_validate(body)``; write status with
``TrainerJobStatus(...).to_api()`` or the dict helpers in ``conditions``.
"""

from vlm_operator.api.base import API_VERSION, GROUP, VERSION, KindInfo, Resource
from vlm_operator.api.checkpoint import (
    Checkpoint,
    CheckpointPhase,
    CheckpointSpec,
    CheckpointStatus,
    Promotion,
)
from vlm_operator.api.common import CheckpointType, Mode
from vlm_operator.api.conditions import (
    Condition,
    ConditionStatus,
    ConditionType,
    Reason,
    find_condition,
    is_condition_true,
    new_condition,
    set_condition,
)
from vlm_operator.api.job import (
    Dataset,
    DpoSettings,
    Hyperparameters,
    JobPhase,
    Progress,
    RlSettings,
    TrainerJob,
    TrainerJobSpec,
    TrainerJobStatus,
    max_seq_len,
    shape_violations,
)
from vlm_operator.api.shape import (
    TrainingShape,
    TrainingShapeSpec,
    TrainingShapeStatus,
    shape_version,
)

#: Every kind, in the order crdgen writes them.
KINDS: tuple[type[Resource], ...] = (TrainingShape, TrainerJob, Checkpoint)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "Checkpoint",
    "CheckpointPhase",
    "CheckpointSpec",
    "CheckpointStatus",
    "CheckpointType",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "Dataset",
    "DpoSettings",
    "Hyperparameters",
    "JobPhase",
    "KindInfo",
    "Mode",
    "Progress",
    "Promotion",
    "Reason",
    "Resource",
    "RlSettings",
    "TrainerJob",
    "TrainerJobSpec",
    "TrainerJobStatus",
    "TrainingShape",
    "TrainingShapeSpec",
    "TrainingShapeStatus",
    "find_condition",
    "is_condition_true",
    "max_seq_len",
    "new_condition",
    "set_condition",
    "shape_version",
    "shape_violations",
]
