"""Exception types of tensorguard_learning: every refusal names what was wrong."""


class LearningError(Exception):
    """Base class of every error raised by tensorguard_learning."""


class StoreCorruptError(LearningError):
    """The demonstration store holds bytes that are not a valid record where one must be."""


class StoreFullError(LearningError):
    """The demonstration store cannot take more data under its size cap and policy."""


class InvalidDemonstrationError(LearningError):
    """A frame or episode has missing keys, wrong shapes or wrong types."""


class EnvelopeViolation(LearningError):
    """Training or an update would leave the OperatingEnvelope."""


class UpdateFormatError(LearningError):
    """An update vector or a model blob does not match the policy layout."""


class ConfigError(LearningError):
    """A configuration value is out of range or inconsistent."""
