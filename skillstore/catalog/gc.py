"""Blob garbage collection: delete blobs that no catalog row refers to."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..blobstore import BlobInfo, BlobStore
from .models import EvalResult, ModelState, Promotion, Skill, SkillPack

# Every column that may hold a blob digest. A later table that stores digests adds itself here.
BLOB_REFERENCES = (
    SkillPack.blob_digest,
    ModelState.router_blob_digest,
    Skill.data_sha256,
    Promotion.report_ref,
    EvalResult.samples_digest,
)
# Keys of a skill's held-out record (skills.heldout) that name blobs: the halves of its data.
HELDOUT_REFERENCES = ("train_sha256", "test_sha256")
# A pack's metrics record of its uncompressed fine-tune's score (gate/reference.py) names the
# blob of its per-sample scores.
FINETUNE_REFERENCE = ("finetune", "samples_digest")


@dataclass
class GcReport:
    unreferenced: list[BlobInfo] = field(default_factory=list)
    too_young: list[BlobInfo] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    stale_staging: list[str] = field(default_factory=list)  # interrupted writes
    kept: int = 0

    @property
    def freed_bytes(self) -> int:
        gone = set(self.deleted)
        return sum(b.size for b in self.unreferenced if b.digest in gone)


def referenced_digests(session: Session) -> set[str]:
    refs: set[str] = set()
    for column in BLOB_REFERENCES:
        q = sa.select(column).where(column.is_not(None)).distinct()
        refs.update(v for v in session.scalars(q) if v)
    for heldout in session.scalars(sa.select(Skill.heldout)):  # JSON: filtered in Python
        if isinstance(heldout, dict):
            refs.update(heldout[k] for k in HELDOUT_REFERENCES if heldout.get(k))
    for metrics in session.scalars(sa.select(SkillPack.metrics)):
        record = metrics.get(FINETUNE_REFERENCE[0]) if isinstance(metrics, dict) else None
        if isinstance(record, dict) and record.get(FINETUNE_REFERENCE[1]):
            refs.add(record[FINETUNE_REFERENCE[1]])
    return refs


def collect_garbage(session: Session, store: BlobStore, *, dry_run: bool = True,
                    min_age: timedelta = timedelta(hours=1)) -> GcReport:
    """Find (and unless `dry_run`, delete) unreferenced blobs older than `min_age`.

    The age floor protects a blob that a running job has written but not yet recorded.
    """
    refs = referenced_digests(session)
    cutoff = datetime.now(timezone.utc) - min_age
    report = GcReport()
    for blob in store.iter_blobs():
        if blob.digest in refs:
            report.kept += 1
        elif blob.modified is not None and blob.modified > cutoff:
            report.too_young.append(blob)
        else:
            report.unreferenced.append(blob)
    report.stale_staging = [path for path, modified in store.iter_staging()
                            if modified is None or modified <= cutoff]
    if not dry_run:
        for blob in report.unreferenced:
            store.delete(blob.digest)
            report.deleted.append(blob.digest)
        for path in report.stale_staging:
            store.fs.rm(path)
    return report
