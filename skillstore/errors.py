"""The exception hierarchy: one base class, specific subclasses that are also built-ins."""


class SkillstoreError(Exception):
    """Base of every error skillstore raises on purpose.

    The message is one line a user can act on: what went wrong, which object, what to do.
    """


class NotFoundError(SkillstoreError, LookupError):
    """An id or name that the catalog, the blob store or the filesystem does not have."""


class ConfigError(SkillstoreError, ValueError):
    """Settings or a policy that do not parse or do not make sense."""


class RequestError(ConfigError):
    """A request (a learning job's options) with a field that does not validate.

    ``field`` is the dotted path of the first bad field (``sft.max_steps``), so the API can
    answer 422 naming it.
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class DatabaseUnavailableError(SkillstoreError, ConnectionError):
    """The catalog database cannot be reached."""


class WorkspaceError(SkillstoreError, RuntimeError):
    """A workspace that was never initialised, or whose schema is older than the code."""


class BlobError(SkillstoreError, OSError):
    """A blob that is missing or whose content does not match its digest."""


class BlobNotFoundError(BlobError, FileNotFoundError):
    """A digest the blob store does not hold."""


class BlobCorruptError(BlobError):
    """A blob whose bytes no longer hash to its digest."""


class CorruptPackError(SkillstoreError, ValueError):
    """A SkillPack file that is truncated, altered or not a SkillPack at all."""


class FingerprintMismatchError(SkillstoreError, ValueError):
    """A pack or checkpoint that belongs to another base model."""


class ModelMismatchError(SkillstoreError, ValueError):
    """Two checkpoints whose architectures, tensor names or shapes differ."""


class DatasetError(SkillstoreError, ValueError):
    """A training or evaluation dataset that is malformed."""


class TrainingError(SkillstoreError, RuntimeError):
    """Training that cannot go on: a NaN or infinite loss, or no data."""


class JobError(SkillstoreError, RuntimeError):
    """A learning job that cannot be queued, run or changed as asked."""


def did_you_mean(name: str, valid: "list[str] | tuple[str, ...]") -> str:
    """The tail of an 'unknown name' message: the closest match and the full list."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid names: {', '.join(sorted(valid))}."


def unknown_name(kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> ConfigError:
    """A registry lookup error in lm-eval's style: did you mean, and the valid names."""
    return ConfigError(f"Unknown {kind} {name!r}.{did_you_mean(name, valid)}")


class EvaluationError(SkillstoreError, ValueError):
    """An evaluation suite, result set or accuracy matrix that cannot be used as given."""


class RoutingError(SkillstoreError, ValueError):
    """A router that is untrained, foreign to the base model, or asked for unknown packs."""


class PromotionConflictError(SkillstoreError, RuntimeError):
    """A promotion whose base moved to a newer state while it was being decided; retry it."""


class StaleEvaluationError(PromotionConflictError):
    """A candidate scored against a head that has moved since; evaluate it again on the new head."""
