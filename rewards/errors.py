"""Exceptions raised by the reward package; each message names the reward, the thing and the fix."""

from __future__ import annotations


class RewardError(Exception):
    """Base class of every reward error."""


class RewardConfigError(RewardError, ValueError):
    """A recipe's reward spec is wrong: unknown name or parameter, bad gate, missing column."""


class RewardCheckpointError(RewardError, ValueError):
    """A checkpoint file is missing, unreadable or does not fit the architecture asked for."""


class RewardScoreError(RewardError, RuntimeError):
    """A reward raised, returned the wrong number of values, or returned NaN/inf while scoring."""


class RewardOutputLengthError(RewardScoreError):
    """A reward returned a different number of values than rows it was given (never dropped)."""
