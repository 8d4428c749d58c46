"""The one error hierarchy of vxdeploy.

Every error a user can act on derives from :class:`UserError` and says what was wrong
(the field or input, the value) and how to fix it. Everything else is an
:class:`InternalError`: a bug or an environment failure, not the user's input.
"""

from __future__ import annotations


class VxdeployError(Exception):
    """Base class of every error vxdeploy raises on purpose."""


class UserError(VxdeployError):
    """Bad input from the user: configuration, model, data or cloud settings."""


class ConfigError(UserError):
    """A configuration field has a value outside what it allows."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field = field
        self.value = value
        self.fix = fix
        super().__init__(f"{field}={value!r}: {fix}")


class ModelIntakeError(UserError):
    """The model file cannot be read, or its signature does not fit the run."""


class DataError(UserError):
    """Calibration or evaluation data does not match the model's inputs."""


class ParityError(UserError):
    """An exported or compiled model disagrees with its reference beyond tolerance."""


class AccuracyBudgetError(UserError):
    """No candidate stays within the configured accuracy budget."""


class ServiceLevelError(UserError):
    """No candidate meets the configured latency or cost targets."""


class RolloutConflictError(UserError):
    """Another rollout holds the endpoint."""


class CanaryRolledBackError(VxdeployError):
    """The canary failed its smoke test or analysis and traffic went back to the serving model.

    Not a bug and not bad input: the new version did worse than the rules allow, so the run fails
    after putting traffic back.
    """


class CandidateUnavailable(VxdeployError):
    """A serving candidate cannot be built here (e.g. TensorRT without a GPU).

    Not a failure of the run: the candidate is skipped and the reason reported.
    """


class InternalError(VxdeployError):
    """Something vxdeploy or its environment got wrong; not fixable by changing input."""


class CloudOperationError(InternalError):
    """A Google Cloud call or long-running operation failed or timed out."""
