"""The evaluator's candidates consumer on a repository mirrored from object storage (the chart's
``modelRepository.type=objectStorage``): an announced version that has not been copied yet is asked for
again later, not sent to the dead-letter topic unjudged."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from scalerec_adapters.bus import Message
from scalerec_adapters.embedded.sqlite_store import SqliteStore
from scalerec_adapters.worker import RetryLater, is_transient
from scalerec_evaluator.config import EvaluatorSettings
from scalerec_evaluator.consumers.candidates import CandidatesConsumer
from scalerec_evaluator.service import Evaluator
from scalerec_events.models import ModelAnnouncement
from scalerec_models import repository as repo
from scalerec_storage import schema as s


async def test_a_candidate_not_yet_copied_is_retried_not_dead_lettered(tmp_path: Path) -> None:
    settings = EvaluatorSettings(data_dir=tmp_path, model_repository=tmp_path / "mirror", auth="disabled")
    store = SqliteStore(tmp_path / "store.db")
    store.ensure_tables(s.tables())
    try:
        # Nothing here is reached before the wait: no bus or Triton needed.
        evaluator = Evaluator(settings, store, producer=None, controller=None)  # type: ignore[arg-type]
        ann = ModelAnnouncement(
            model=repo.RANKER_MODEL, version=4, repository=str(settings.model_repository), created_at=datetime.now(UTC)
        )
        message = Message("models.candidate", 0, 0, None, ann.model_dump_json().encode())
        with pytest.raises(RetryLater, match="version 4 is not in") as raised:
            await CandidatesConsumer(evaluator).handle([message])
        assert is_transient(raised.value)  # retried for as long as it takes, never counted as a failure
        assert evaluator.report(4) is None
    finally:
        store.close()
