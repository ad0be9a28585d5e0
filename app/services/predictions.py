"""Rating predictions (seed 003's ``/stream`` and ``/batch``) from the loaded bundle's rating model.

The rating model is a :class:`~app.recommender.models.linear.LinearRatingModel` (the
hand-written :class:`SimpleLinearRegression` over user-by-movie features) trained with the
bundle and loaded with it (``rating_model.pkl``), so a hot reload swaps it together with the
recommendation tables. Many records are predicted in one vectorised call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.errors import Unavailable
from app.recommender.models.linear import InvalidRecordError
from app.services.models import ModelHolder

RECORD_FIELDS = frozenset({"age", "gender", "occupation", "movie_id", "user_id"})


class UnknownRecordField(InvalidRecordError):
    """A record holds a field that is none of ``RECORD_FIELDS``."""


class PredictionService:
    def __init__(self, models: ModelHolder) -> None:
        self.models = models

    def predict(self, records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, str]:
        """Predicted ratings (1..5) for ``records`` and the bundle version that made them.

        A malformed record raises :class:`InvalidRecordError` (:class:`UnknownRecordField` for
        a field that is not a record's) naming its position and field; the API words it
        (app/api/predict.py), as the request schemas word the same fields.
        """
        bundle = self.models.require()
        model = bundle.rating_model
        if model is None:
            raise Unavailable(f"model {bundle.version} has no rating model; predictions are unavailable")
        try:
            return self._predicted(model, records), bundle.version
        except InvalidRecordError as exc:
            first = _first_invalid(model, records, exc)
            if first is exc:
                raise
            raise first from exc

    @staticmethod
    def _predicted(model: Any, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        # Checked at C speed over all records at once; the slow path only names the culprit.
        if not all(type(record) is dict for record in records):
            index = next(i for i, record in enumerate(records) if not isinstance(record, dict))
            raise InvalidRecordError(index, "record", "must be an object")
        keys: set[str] = set().union(*records)
        extra = keys - RECORD_FIELDS
        if extra:  # the first record holding one, and its first such field by name
            index = next(i for i, record in enumerate(records) if not RECORD_FIELDS.issuperset(record))
            raise UnknownRecordField(index, min(set(records[index]) - RECORD_FIELDS), "unknown field")
        return model.predict_records(records)  # type: ignore[no-any-return]


def _first_invalid(
    model: Any, records: Sequence[Mapping[str, Any]], error: InvalidRecordError
) -> InvalidRecordError:
    """The error naming the first bad record, ``error`` (which names a bad one) or an earlier one.

    Each check runs over all the records before the next one, so a record failing a later check
    (a bad age) was passed over for a later record failing an earlier one (an unknown field). The
    records before the one named are checked again until they pass. Each check names its first
    culprit, so a check that failed passes the records before it: every round fails a later check
    than the last, a few rounds at most, and only a refused batch pays for them.
    """
    while error.index > 0:
        try:
            PredictionService._predicted(model, records[: error.index])
        except InvalidRecordError as earlier:
            error = earlier
        else:
            break
    return error
